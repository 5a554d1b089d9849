// uPlot charts as Preact components. uPlot is loaded as a global by index.html (vendor/uPlot.iife.min.js).
import { useEffect, useRef } from "preact/hooks";
import { html } from "./html.js";

const COLORS = ["#2f6fdb", "#e8590c", "#2b8a3e", "#862e9c", "#c2255c", "#1098ad"];

// x: numbers (steps, or Unix seconds with time=true); series: [{label, values, color?, dash?, marker?}].
// A `marker` series draws its non-null values as large points without a line (best step, fired reports).
export function Chart({ title, x, series, time = false, height = 230, testid, xlabel, ylabel }) {
  const ref = useRef(null);
  const key = JSON.stringify([title, x, series.map((s) => [s.label, s.values])]);
  useEffect(() => {
    const el = ref.current;
    if (!el || !x.length) return undefined;
    const opts = {
      title, height, width: Math.max(320, el.clientWidth || 480),
      scales: { x: { time } },
      axes: [{ label: xlabel }, { label: ylabel, size: 60 }],
      series: [{ label: time ? "time" : (xlabel || "x") }, ...series.map((s, i) => {
        const color = s.color || COLORS[i % COLORS.length];
        return s.marker
          ? { label: s.label, stroke: color, width: 0, points: { show: true, size: 11, fill: color }, paths: () => null }
          : { label: s.label, stroke: color, width: s.width || 2, dash: s.dash, spanGaps: true,
              points: { show: x.length < 60, size: 5 } };
      })],
    };
    const plot = new uPlot(opts, [x, ...series.map((s) => s.values)], el);
    return () => plot.destroy();
  }, [key]);
  if (!x.length) return html`<p class="muted">${title}: no data yet.</p>`;
  return html`<div class="chart" data-testid=${testid} ref=${ref}></div>`;
}

// The training curve of a run: holdout NDCG@10 per evaluation step, the best step marked.
export function CurveChart({ run, label, testid = "curve-chart" }) {
  const steps = run.curve.map((p) => p.step);
  const values = run.curve.map((p) => p.holdout_ndcg10);
  const best = run.curve.map((p) => (p.step === run.best_step ? p.holdout_ndcg10 : null));
  return html`<${Chart} title=${`Training curve${label ? ` of ${label}` : ""} (best step ${run.best_step ?? "–"})`}
    testid=${testid} x=${steps} xlabel="step" ylabel="holdout NDCG@10"
    series=${[{ label: "holdout NDCG@10", values }, { label: "best step", values: best, marker: true, color: "#c4302b" }]} />`;
}

// An estimated position-bias curve: propensity per position.
export function PropensityChart({ propensity }) {
  const x = propensity.estimated.map((_, i) => i + 1);
  return html`<${Chart} title=${`Position-bias propensity (${propensity.method || "estimated"})`} testid="propensity-chart"
    x=${x} xlabel="position" ylabel="propensity" series=${[{ label: "propensity", values: propensity.estimated }]} />`;
}
