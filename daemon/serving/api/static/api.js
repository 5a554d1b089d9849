// The JSON API, as the console uses it: the operator token lives in sessionStorage (this tab only).
const TOKEN_KEY = "ranktune.token";

export const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";
export const setToken = (t) => (t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY));

export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body, token } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token ?? getToken();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const doc = await res.json().catch(() => null);
  if (!res.ok) {
    const err = (doc && doc.error) || {};
    throw new ApiError(res.status, err.code || "http_error", err.message || res.statusText);
  }
  return doc;
}

// Every item of a paged list (newest first), following the cursor; `max` bounds the pages fetched.
export async function all(path, params = {}, max = 20) {
  let items = [];
  let before = null;
  for (let i = 0; i < max; i++) {
    const q = new URLSearchParams({ ...params, ...(before ? { before } : {}) });
    const page = await api(`${path}?${q}`);
    items = items.concat(page.items);
    before = page.next_before;
    if (!before) return { items, page };
  }
  return { items, page: null };
}

export const fmt = {
  num: (x, d = 4) => (x === null || x === undefined ? "–" : Number(x).toFixed(d)),
  signed: (x, d = 4) => (x === null || x === undefined ? "–" : (x >= 0 ? "+" : "") + Number(x).toFixed(d)),
  pct: (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`),
  time: (s) => (s ? new Date(s).toLocaleString() : "–"),
  short: (s) => (s ? String(s).split("/").slice(-1)[0] : "–"),
};

export const holdout = (m, split = "holdout") => ((m && m.candidate && m.candidate[split]) || {}).ndcg10;
