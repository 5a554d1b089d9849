// Versions: the list, one version's page (curve, propensity, audit history), and Compare.
import { useState } from "preact/hooks";
import { api, fmt, holdout } from "./api.js";
import { Chart, CurveChart, PropensityChart } from "./charts.js";
import { Failure, html, useLoad } from "./html.js";

export function Gate({ gate }) {
  if (!gate) return html`<span class="muted">–</span>`;
  return html`<span class=${gate.passed ? "pass" : "fail"}>${gate.passed ? "PASS" : "FAIL"}</span>
    <span class="small"> gain ${fmt.signed(gate.ndcg_gain)}, p(gain) ${fmt.pct(gate.bootstrap_p_gain)},
    regression ${fmt.signed(gate.regression_delta)}, off-page ${fmt.signed(gate.offpage_delta)} vs ${gate.compared_with}</span>`;
}

const Status = ({ status }) => html`<span class=${`badge ${status}`}>${status}</span>`;

export function VersionsPage({ refresh, onAction }) {
  const { data, error } = useLoad(() => api("/v1/adapters"), [refresh]);
  if (error) return html`<${Failure} error=${error} />`;
  if (!data) return html`<p class="muted">Loading…</p>`;
  const versions = [...data.versions].reverse();
  return html`<section class="card">
    <h2>Versions</h2>
    <p>Champion <b data-testid="champion">${data.champion}</b> · previous ${data.previous || "–"} · this replica
      serves <b>${data.served}</b>
      ${data.previous ? html` <button class="danger" data-testid="rollback"
        onClick=${() => onAction({ kind: "rollback", version: data.previous })}>Roll back to ${data.previous}</button>` : null}
      ${data.champion !== "base" ? html` <button data-testid="promote-base"
        onClick=${() => onAction({ kind: "promote", version: "base" })}>Serve the base model</button>` : null}</p>
    <table data-testid="versions">
      <thead><tr><th>version</th><th>status</th><th>parent</th><th>base model</th><th>quant.</th><th>created</th>
        <th class="num">holdout NDCG@10</th><th class="num">regression NDCG@10</th><th>gate</th><th></th></tr></thead>
      <tbody>${versions.map((v) => html`<tr data-testid=${`version-row-${v.version}`}>
        <td><a href=${`#/versions/${v.version}`}>${v.version}</a></td><td><${Status} status=${v.status} /></td>
        <td>${v.parent_version || "base"}</td><td class="small">${fmt.short(v.base_model)}</td><td>${v.quantization}</td>
        <td class="small">${fmt.time(v.created_at)}</td><td class="num">${fmt.num(holdout(v.metrics))}</td>
        <td class="num">${fmt.num(holdout(v.metrics, "regression"))}</td><td><${Gate} gate=${v.gate} /></td>
        <td>${v.status !== "champion" ? html`<button class="primary" data-testid=${`promote-${v.version}`}
          onClick=${() => onAction({ kind: "promote", version: v.version })}>Promote</button>` : null}</td>
      </tr>`)}</tbody>
    </table>
    ${versions.length === 0 ? html`<p class="muted">No adapter yet: the zero-shot base model serves.</p>` : null}
  </section>`;
}

async function loadVersion(name) {
  const version = await api(`/v1/adapters/${name}`);
  const run = version.training_run_id ? await api(`/v1/runs/${version.training_run_id}`) : null;
  return { version, run };
}

function Metrics({ m }) {
  const rows = [["holdout", (m.candidate || {}).holdout, (m.compared_with || {}).holdout],
                ["regression", (m.candidate || {}).regression, (m.compared_with || {}).regression]];
  return html`<table class="small"><thead><tr><th>split</th><th class="num">NDCG@10</th><th class="num">MRR</th>
    <th class="num">AUC</th><th class="num">${(m.compared_with || {}).version || "champion"} NDCG@10</th></tr></thead>
    <tbody>${rows.map(([name, c, b]) => html`<tr><td>${name}</td><td class="num">${fmt.num((c || {}).ndcg10)}</td>
      <td class="num">${fmt.num((c || {}).mrr)}</td><td class="num">${fmt.num((c || {}).auc)}</td>
      <td class="num">${fmt.num((b || {}).ndcg10)}</td></tr>`)}</tbody></table>`;
}

export function AuditTable({ rows, testid = "audit" }) {
  return html`<table data-testid=${testid}><thead><tr><th>#</th><th>time</th><th>actor</th><th>action</th>
    <th>from → to</th><th>reason</th></tr></thead>
    <tbody>${rows.map((a) => html`<tr data-testid="audit-row"><td>${a.id}</td><td class="small">${fmt.time(a.ts)}</td>
      <td>${a.actor}</td><td>${a.action}</td><td>${a.from_version || "–"} → ${a.to_version || "–"}</td>
      <td>${a.reason || ""}</td></tr>`)}</tbody></table>`;
}

export function VersionPage({ name, refresh, onAction }) {
  const { data, error } = useLoad(() => loadVersion(name), [name, refresh]);
  if (error) return html`<${Failure} error=${error} />`;
  if (!data) return html`<p class="muted">Loading…</p>`;
  const { version: v, run } = data;
  const gate = v.gate || {};
  const propensity = (run && run.propensity) || (v.metrics || {}).propensity;  // the run's, else the version's
  return html`<section class="card" data-testid="version-page">
    <h2>${v.version} <${Status} status=${v.status} />
      ${v.status !== "champion" ? html` <button class="primary" data-testid=${`promote-${v.version}`}
        onClick=${() => onAction({ kind: "promote", version: v.version })}>Promote</button>` : null}</h2>
    <div class="grid2"><dl class="kv">
      <dt>parent</dt><dd>${v.parent_version || "base"}</dd><dt>base model</dt><dd>${v.base_model || "–"}</dd>
      <dt>quantization</dt><dd>${v.quantization || "–"}</dd><dt>created</dt><dd>${fmt.time(v.created_at)}</dd>
      <dt>checksum</dt><dd class="small">${(v.checksum || "").slice(0, 16)}…</dd>
      ${run ? html`<dt>training run</dt><dd>#${run.id} (${run.trigger}), ${run.n_train} groups, ${run.steps} steps, ${
        fmt.num(run.seconds, 0)} s, ${fmt.num(run.examples_per_s, 1)} pairs/s${run.early_stopped ? ", early stop" : ""}</dd>` : null}
      <dt>gate</dt><dd><${Gate} gate=${v.gate} /><ul class="reasons">${(gate.reasons || []).map((r) => html`<li>${r}</li>`)}</ul>
        ${gate.ci_low !== undefined ? html`<span class="small">bootstrap interval of the gain (at the gate's confidence) [${fmt.signed(gate.ci_low)},
          ${fmt.signed(gate.ci_high)}] over ${gate.n_groups} groups</span>` : null}</dd>
    </dl><${Metrics} m=${v.metrics || {}} /></div>
    <div class="charts">
      ${run && run.curve.length ? html`<${CurveChart} run=${run} />` : html`<p class="muted">No training curve recorded.</p>`}
      ${propensity ? html`<${PropensityChart} propensity=${propensity} />` : null}
    </div>
    <h3>Audit history</h3><${AuditTable} rows=${v.history} testid="version-audit" />
  </section>`;
}

async function loadPair(a, b) {
  return Promise.all([a, b].map((n) => (n ? loadVersion(n) : null)));
}

export function ComparePage({ a, b, refresh }) {
  const list = useLoad(() => api("/v1/adapters"), [refresh]);
  const pair = useLoad(() => loadPair(a, b), [a, b, refresh]);
  const [sel, setSel] = useState({ a, b });
  if (list.error) return html`<${Failure} error=${list.error} />`;
  const names = list.data ? list.data.versions.map((v) => v.version) : [];
  const go = () => { location.hash = `#/compare/${sel.a || ""}/${sel.b || ""}`; };
  const pick = (k) => html`<select data-testid=${`compare-${k}`} value=${sel[k] || ""}
    onChange=${(e) => setSel({ ...sel, [k]: e.target.value })}><option value="">–</option>
    ${names.map((n) => html`<option value=${n}>${n}</option>`)}</select>`;
  const both = pair.data && pair.data[0] && pair.data[1];
  return html`<section class="card"><h2>Compare</h2>
    <p>${pick("a")} with ${pick("b")} <button onClick=${go}>Compare</button></p>
    ${pair.error ? html`<${Failure} error=${pair.error} />` : null}
    ${both ? html`<${CompareTable} left=${pair.data[0]} right=${pair.data[1]} />` : null}
  </section>`;
}

function CompareTable({ left, right }) {
  const rows = [
    ["status", (d) => d.version.status], ["parent", (d) => d.version.parent_version || "base"],
    ["created", (d) => fmt.time(d.version.created_at)], ["quantization", (d) => d.version.quantization],
    ["holdout NDCG@10", (d) => fmt.num(holdout(d.version.metrics))],
    ["regression NDCG@10", (d) => fmt.num(holdout(d.version.metrics, "regression"))],
    ["gate", (d) => html`<${Gate} gate=${d.version.gate} />`],
    ["training", (d) => (d.run ? `#${d.run.id} ${d.run.trigger}: ${d.run.steps} steps, best ${d.run.best_step}, ${fmt.num(d.run.seconds, 0)} s` : "–")],
  ];
  const curves = [left, right].filter((d) => d.run && d.run.curve.length);
  const steps = [...new Set(curves.flatMap((d) => d.run.curve.map((p) => p.step)))].sort((p, q) => p - q);
  const series = curves.map((d) => {
    const at = Object.fromEntries(d.run.curve.map((p) => [p.step, p.holdout_ndcg10]));
    return { label: d.version.version, values: steps.map((s) => (s in at ? at[s] : null)) };
  });
  return html`<table data-testid="compare-table"><thead><tr><th></th><th>${left.version.version}</th>
    <th>${right.version.version}</th></tr></thead><tbody>${rows.map(([label, get]) => html`<tr><th>${label}</th>
    <td>${get(left)}</td><td>${get(right)}</td></tr>`)}</tbody></table>
    <${Chart} title="Training curves" testid="compare-chart" x=${steps} xlabel="step" ylabel="holdout NDCG@10"
      series=${series} />`;
}

