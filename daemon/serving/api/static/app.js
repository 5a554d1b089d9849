// The ranktune console: a hash-routed Preact app over the JSON API (see README.md in this folder).
import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { api, getToken, setToken } from "./api.js";
import { html } from "./html.js";
import { AuditPage, DriftPage, IngestPage } from "./views-ops.js";
import { ComparePage, VersionPage, VersionsPage } from "./views-versions.js";

const PAGES = [["versions", "Versions"], ["compare", "Compare"], ["drift", "Drift"], ["ingest", "Ingestion"],
  ["audit", "Audit log"]];

function useRoute() {
  const read = () => (location.hash.replace(/^#\/?/, "") || "versions").split("/");
  const [route, setRoute] = useState(read());
  useEffect(() => {
    const on = () => setRoute(read());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}

function TokenBox({ onChange }) {
  const [value, setValue] = useState(getToken());
  const save = (e) => { e.preventDefault(); setToken(value.trim()); onChange(); };
  return html`<form class="token" onSubmit=${save}>
    <input type="password" placeholder="operator token" data-testid="token" value=${value}
      onInput=${(e) => setValue(e.target.value)} autocomplete="off" />
    <button type="submit" data-testid="token-save">${getToken() ? "Update" : "Sign in"}</button></form>`;
}

// Promote / roll back: asks for the token and a reason, then calls the same endpoint as any API client.
function ActionDialog({ action, onClose, onDone }) {
  const ref = useRef(null);
  const [token, setTok] = useState(getToken());
  const [reason, setReason] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => { if (ref.current && !ref.current.open) ref.current.showModal(); }, []);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    const path = action.kind === "promote" ? `/v1/adapters/${action.version}/promote` : "/v1/adapters/rollback";
    try {
      const result = await api(path, { method: "POST", body: { reason: reason || null }, token: token.trim() });
      setToken(token.trim());
      onDone(result);
    } catch (err) {
      setError(err.message);
      setBusy(false);
    }
  };
  const verb = action.kind === "promote" ? `Promote ${action.version}` : `Roll back to ${action.version}`;
  return html`<dialog ref=${ref} data-testid="action-dialog" onCancel=${onClose}><form onSubmit=${submit}>
    <h2>${verb}</h2>
    <p class="small muted">${action.kind === "promote" ? `${action.version} becomes the champion; every replica swaps to it.`
      : "The previous champion serves again; every replica swaps to it."} The action is written to the audit log.</p>
    <label for="dlg-token">Operator token</label>
    <input id="dlg-token" type="password" data-testid="dialog-token" required value=${token}
      onInput=${(e) => setTok(e.target.value)} autocomplete="off" />
    <label for="dlg-reason">Reason (for the audit log)</label>
    <textarea id="dlg-reason" rows="3" data-testid="dialog-reason" required value=${reason}
      onInput=${(e) => setReason(e.target.value)}></textarea>
    ${error ? html`<p class="error" data-testid="dialog-error">${error}</p>` : null}
    <div class="actions"><button type="button" onClick=${onClose}>Cancel</button>
      <button class="primary" type="submit" data-testid="dialog-confirm" disabled=${busy}>${verb}</button></div>
  </form></dialog>`;
}

function App() {
  const route = useRoute();
  const [refresh, setRefresh] = useState(0);
  const [action, setAction] = useState(null);
  const [notice, setNotice] = useState(null);
  const bump = () => setRefresh((n) => n + 1);
  const done = (r) => {
    setAction(null);
    setNotice(`${r.action}: ${r.from_version} → ${r.to_version} (audit #${r.audit_id}); this replica serves ${r.served}`
      + (r.published ? "; replicas notified" : "; other replicas follow at their next reconcile"));
    bump();
  };
  const [page, a, b] = route;
  const view = {
    versions: () => (a ? html`<${VersionPage} name=${a} refresh=${refresh} onAction=${setAction} />`
      : html`<${VersionsPage} refresh=${refresh} onAction=${setAction} />`),
    compare: () => html`<${ComparePage} a=${a} b=${b} refresh=${refresh} />`,
    drift: () => html`<${DriftPage} refresh=${refresh} />`,
    ingest: () => html`<${IngestPage} />`,
    audit: () => html`<${AuditPage} refresh=${refresh} />`,
  }[page] || (() => html`<p>No page ${page}.</p>`);
  return html`<header><h1>ranktune</h1><nav>${PAGES.map(([id, label]) => html`<a href=${`#/${id}`}
      class=${id === page ? "active" : ""}>${label}</a>`)}</nav><${Served} refresh=${refresh} />
    <${TokenBox} onChange=${bump} /></header>
    <main>${notice ? html`<div class="notice" data-testid="notice">${notice}</div>` : null}${view()}</main>
    ${action ? html`<${ActionDialog} action=${action} onClose=${() => setAction(null)} onDone=${done} />` : null}`;
}

function Served({ refresh }) {
  const [ready, setReady] = useState(null);
  useEffect(() => { api("/readyz").then(setReady, () => setReady(null)); }, [refresh]);
  return html`<span class="small muted" data-testid="served">${ready ? `serving ${ready.adapter_version}` : "not ready"}</span>`;
}

const root = document.getElementById("app");
root.textContent = "";  // the "Loading" placeholder
render(html`<${App} />`, root);
