// A small SVG line chart of per-turn latency. Series differ by colour AND marker shape, so the
// chart reads without colour vision; every point carries its number (data-value, <title>).

import { SERIES } from "./metrics.js";

const NS = "http://www.w3.org/2000/svg";
const PAD = { top: 16, right: 16, bottom: 36, left: 56 };
export const VISIBLE_TURNS = 20;

// Okabe-Ito colours (distinguishable with the common colour-vision deficiencies).
export const STYLE = {
  e2e: { color: "#0072B2", marker: "circle", width: 3 },
  eou: { color: "#E69F00", marker: "square", width: 1.5 },
  llm: { color: "#009E73", marker: "triangle", width: 1.5 },
  tts: { color: "#CC79A7", marker: "diamond", width: 1.5 },
  tool: { color: "#D55E00", marker: "cross", width: 1.5 },
};

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

/** A "nice" axis maximum and step (1, 2 or 5 times a power of ten), at least 0.5 s. */
function niceScale(maxValue) {
  const top = Math.max(maxValue, 0.5);
  const rough = top / 4;
  const pow = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= rough);
  return { max: Math.ceil(top / step) * step, step };
}

function marker(shape, x, y, color, parent) {
  const r = 4.5;
  switch (shape) {
    case "square":
      return el("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r, fill: color }, parent);
    case "triangle":
      return el("path", { d: `M${x},${y - r - 1}L${x + r + 1},${y + r}L${x - r - 1},${y + r}Z`, fill: color }, parent);
    case "diamond":
      return el("path", { d: `M${x},${y - r - 1}L${x + r + 1},${y}L${x},${y + r + 1}L${x - r - 1},${y}Z`, fill: color }, parent);
    case "cross":
      return el("path", { d: `M${x - r},${y - r}L${x + r},${y + r}M${x - r},${y + r}L${x + r},${y - r}`, stroke: color, "stroke-width": 2.5, fill: "none" }, parent);
    default:
      return el("circle", { cx: x, cy: y, r: r + 0.5, fill: color }, parent);
  }
}

export function ms(seconds) {
  return seconds === null || seconds === undefined ? "–" : `${Math.round(seconds * 1000)} ms`;
}

/** Draw `turns` (MetricsModel.turns) into `svg`, replacing what was there. */
export function renderChart(svg, turns, { hidden = new Set() } = {}) {
  svg.replaceChildren();
  // Drawn at the element's own width (1 unit = 1 CSS pixel), so labels stay legible on a phone.
  const W = Math.round(Math.min(Math.max(svg.clientWidth || 640, 280), 1200));
  const H = W < 500 ? 220 : 280;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const shown = turns.slice(-(W < 500 ? VISIBLE_TURNS / 2 : VISIBLE_TURNS));
  const series = SERIES.filter((s) => !hidden.has(s.key));
  let maxValue = 0;
  for (const t of shown) for (const s of series) maxValue = Math.max(maxValue, t.values[s.key] ?? 0);
  const { max, step } = niceScale(maxValue);
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const slots = Math.max(shown.length, 2);
  const x = (i) => PAD.left + (shown.length <= 1 ? plotW / 2 : (i * plotW) / (slots - 1));
  const y = (v) => PAD.top + plotH - (v / max) * plotH;

  const grid = el("g", { class: "grid", "aria-hidden": "true" }, svg);
  for (let v = 0; v <= max + step / 1000; v += step) {
    el("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }, grid);
    const label = el("text", { x: PAD.left - 8, y: y(v) + 4, "text-anchor": "end" }, grid);
    label.textContent = String(Math.round(v * 1000));
  }
  const unit = el("text", { x: 12, y: PAD.top + plotH / 2, transform: `rotate(-90 12 ${PAD.top + plotH / 2})`, "text-anchor": "middle" }, grid);
  unit.textContent = "milliseconds";
  const labelEvery = Math.ceil(shown.length / 10);
  shown.forEach((t, i) => {
    if (i % labelEvery && i !== shown.length - 1) return;
    const label = el("text", { x: x(i), y: H - PAD.bottom + 18, "text-anchor": "middle" }, grid);
    label.textContent = String(t.n);
  });
  const xTitle = el("text", { x: PAD.left + plotW / 2, y: H - 4, "text-anchor": "middle" }, grid);
  xTitle.textContent = "reply";

  if (shown.length === 0) {
    const empty = el("text", { x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, "text-anchor": "middle", class: "empty" }, svg);
    empty.textContent = "No replies yet";
    return;
  }
  // Tool time is drawn first and e2e last, so the headline line stays on top.
  for (const s of [...series].reverse()) {
    const style = STYLE[s.key];
    const g = el("g", { class: `series series-${s.key}`, "data-series": s.key }, svg);
    // A line through consecutive measured points; a null ("not measured") breaks it.
    let d = "";
    let pen = false;
    shown.forEach((t, i) => {
      const v = t.values[s.key];
      if (v === null) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) el("path", { d, fill: "none", stroke: style.color, "stroke-width": style.width, "stroke-linejoin": "round" }, g);
    shown.forEach((t, i) => {
      const v = t.values[s.key];
      if (v === null) return;
      const m = marker(style.marker, x(i), y(v), style.color, g);
      m.setAttribute("class", "point");
      m.setAttribute("data-turn", String(t.n));
      m.setAttribute("data-value", String(v));
      const title = el("title", {}, m);
      title.textContent = `Reply ${t.n}, ${s.label}: ${ms(v)}`;
    });
  }
}
