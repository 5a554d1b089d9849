// Drift, Ingestion and the Audit log.
import { useEffect, useRef, useState } from "preact/hooks";
import { all, api, fmt } from "./api.js";
import { Chart } from "./charts.js";
import { Failure, html, useLoad } from "./html.js";
import { AuditTable } from "./views-versions.js";

const STATS = [
  ["score_psi", "Prediction drift: score PSI"], ["term_js", "Input drift: query-term JS divergence"],
  ["unseen_item_share", "Share of events with unseen items"], ["unseen_term_share", "Share of events with unseen query terms"],
  ["ndcg10_drop", "Performance drift: NDCG@10 drop"],
];
const WINDOWS = [["6 h", 6], ["24 h", 24], ["7 days", 168], ["all", 0]];

export function DriftPage({ refresh }) {
  const [hours, setHours] = useState(24);
  const { data, error } = useLoad(() => {
    const since = hours ? { since: new Date(Date.now() - hours * 3600e3).toISOString() } : {};
    return all("/v1/drift", { ...since, limit: 1000 });
  }, [hours, refresh]);
  if (error) return html`<${Failure} error=${error} />`;
  if (!data) return html`<p class="muted">Loading…</p>`;
  const reports = [...data.items].reverse();
  const thresholds = data.page ? data.page.thresholds : {};
  const x = reports.map((r) => Date.parse(r.created_at) / 1000);
  const fired = reports.filter((r) => r.fired).reverse();
  return html`<section class="card"><h2>Drift</h2>
    <p>Window: ${WINDOWS.map(([label, h]) => html`<button class=${h === hours ? "primary" : ""}
      onClick=${() => setHours(h)}>${label}</button> `)} <span class="muted">${reports.length} reports. Each detector fires
      above its threshold (dashed) plus a noise floor measured on the data; red points: the report fired.</span></p>
    <div class="charts" data-testid="drift-charts">${STATS.map(([key, title]) => html`<${Chart} title=${title}
      testid=${`drift-${key}`} time=${true} x=${x} series=${[
        { label: key, values: reports.map((r) => r[key]) },
        { label: "threshold", values: reports.map(() => thresholds[key]), dash: [6, 4], color: "#999", width: 1 },
        { label: "fired", values: reports.map((r) => (r.fired ? r[key] : null)), marker: true, color: "#c4302b" },
      ]} />`)}</div>
    <h3>Reports that fired, and the retrains they triggered</h3>
    <table data-testid="drift-fired"><thead><tr><th>time</th><th>champion</th><th>why</th><th>retrain</th></tr></thead>
      <tbody>${fired.map((r) => html`<tr><td class="small">${fmt.time(r.created_at)}</td><td>${r.champion_version}</td>
        <td><ul class="reasons">${r.reasons.filter((s) => !s.startsWith("retrain requested")).map((s) => html`<li>${s}</li>`)}</ul></td>
        <td>${r.retrain_request || "–"}${r.triggered_runs.map((id) => html` <${RunLink} id=${id} />`)}</td></tr>`)}
      </tbody></table>
    ${fired.length === 0 ? html`<p class="muted">No report fired in this window.</p>` : null}
  </section>`;
}

function RunLink({ id }) {
  const { data } = useLoad(() => api(`/v1/runs/${id}`), [id]);
  if (!data) return html`<span>run #${id}</span>`;
  const v = data.candidate_version;
  return html`<span data-testid="triggered-run">run #${id} ${data.status}${v ? html` → <a href=${`#/versions/${v}`}>${v}</a>` : null}</span>`;
}

export function IngestPage() {
  const [tick, setTick] = useState(0);
  const prev = useRef(null);
  useEffect(() => { const t = setInterval(() => setTick((n) => n + 1), 5000); return () => clearInterval(t); }, []);
  const { data, error } = useLoad(() => api("/v1/ingest/stats?bucket_s=60&limit=60"), [tick]);
  const [live, setLive] = useState(null);
  useEffect(() => {
    if (!data || !data.process) return;
    const now = { at: Date.now(), consumed: data.process.consumed || 0 };
    if (prev.current) setLive(Math.max(0, (now.consumed - prev.current.consumed) / ((now.at - prev.current.at) / 1000)));
    prev.current = now;
  }, [data]);
  if (error) return html`<${Failure} error=${error} />`;
  if (!data) return html`<p class="muted">Loading…</p>`;
  const b = data.rate.buckets;
  const p = data.process || {};
  const scalars = Object.entries(p).filter(([, v]) => typeof v !== "object" || v === null);
  const breakdowns = Object.entries(p).filter(([, v]) => v && typeof v === "object");
  return html`<section class="card"><h2>Ingestion</h2>
    <div class="grid2"><dl class="kv" data-testid="ingest-totals">
      <dt>events stored</dt><dd>${data.stored.feedback_events} (${data.stored.labelled_events} labelled)</dd>
      <dt>catalog items</dt><dd>${data.stored.catalog_items}</dd>
      <dt>latest stored</dt><dd>${fmt.time(data.stored.latest_ingested_at)}</dd>
      <dt>events/s (last minute)</dt><dd>${fmt.num(b.length ? b[b.length - 1].events_per_s : 0, 2)}</dd>
      <dt>consumed/s (this process, live)</dt><dd>${live === null ? "…" : fmt.num(live, 1)}</dd>
    </dl>
    <div><h3>Ingest loop of this process</h3><table class="small" data-testid="ingest-counters"><tbody>
      ${scalars.map(([k, v]) => html`<tr><td>${k}</td><td class="num">${k.endsWith("_at") && v ? fmt.time(v * 1000) : String(v)}</td></tr>`)}
    </tbody></table>${data.process ? null : html`<p class="muted">This process runs no ingest loop.</p>`}</div></div>
    ${breakdowns.map(([k, v]) => html`<h3>${k.replaceAll("_", " ")}</h3><table class="small" data-testid=${`ingest-${k}`}>
      <tbody>${Object.entries(v).map(([r, n]) => html`<tr><td>${r}</td><td class="num">${String(n)}</td></tr>`)}</tbody></table>`)}
    <${Chart} title="Events stored per second (1-minute buckets, from the database)" testid="ingest-rate" time=${true}
      x=${b.map((r) => Date.parse(r.start) / 1000)} series=${[{ label: "events/s", values: b.map((r) => r.events_per_s) }]} />
  </section>`;
}

export function AuditPage({ refresh }) {
  const [pages, setPages] = useState([]);
  const [before, setBefore] = useState(null);
  const { data, error } = useLoad(() => api(`/v1/audit?limit=50${before ? `&before=${before}` : ""}`), [before, refresh]);
  useEffect(() => { setPages([]); setBefore(null); }, [refresh]);
  if (error) return html`<${Failure} error=${error} />`;
  if (!data) return html`<p class="muted">Loading…</p>`;
  const rows = [...pages, ...data.items];
  return html`<section class="card"><h2>Audit log</h2><${AuditTable} rows=${rows} />
    ${data.next_before ? html`<p><button onClick=${() => { setPages(rows); setBefore(data.next_before); }}>Older</button></p>` : null}
  </section>`;
}
