// Corral dashboard: draws every <div class="chart" data-series="URL"> with uPlot from the
// API's SeriesList JSON (one line per series), and redraws it every 30 s.
"use strict";

(function () {
  const palette = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];

  function labeller(series, fallback) {
    // Name each line by what tells it apart from the others ("gpu 3", "team-a"): the
    // node of a node's page, or the metric of a one-metric chart, would only repeat
    // the chart's title in every legend entry.
    const varies = (f) => new Set(series.map(f)).size > 1;
    const keys = Array.from(new Set(series.flatMap((s) => Object.keys(s.key)))).filter(
      (k) => k !== "cluster" && varies((s) => String(s.key[k])));
    const metric = varies((s) => s.metric);
    return (s) => {
      const parts = keys.map((k) => (k === "project" || k === "user" ? String(s.key[k]) : `${k} ${s.key[k]}`));
      if (metric) parts.push(s.metric);
      return parts.join(" ") || fallback || s.metric;
    };
  }

  function toColumns(series) {
    // Align every series on the union of their timestamps (uPlot wants one x array).
    const xs = Array.from(new Set(series.flatMap((s) => s.points.map((p) => p[0])))).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = series.map((s) => {
      const col = new Array(xs.length).fill(null);
      for (const [t, v] of s.points) col[index.get(t)] = v;
      return col;
    });
    return [xs, ...ys];
  }

  function tick(v) {
    // 0.30000000000000004 -> 0.3, 1234.5 -> 1234.5: at most 3 decimals, no float noise.
    return Number.isInteger(v) ? String(v) : String(Number(v.toFixed(3)));
  }

  function axisSize(u, values, axisIdx, cycleNum) {
    // uPlot gives the y axis a fixed 50 px, which clips labels such as "1234 GiB":
    // make it as wide as its longest label (measured with the axis's own font).
    const axis = u.axes[axisIdx];
    if (cycleNum > 1) return axis._size;
    let size = axis.ticks.size + axis.gap;
    const longest = (values || []).reduce((a, v) => (v.length > a.length ? v : a), "");
    if (longest) {
      u.ctx.font = axis.font[0];
      size += u.ctx.measureText(longest).width / devicePixelRatio;
    }
    return Math.ceil(size) + 4;
  }

  async function draw(el) {
    const url = el.dataset.series;
    let body;
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      body = await r.json();
    } catch (e) {
      el.innerHTML = `<div class="nodata">could not load the data (${e.message})</div>`;
      return;
    }
    const series = body.series || [];
    el.dataset.points = String(series.reduce((n, s) => n + s.points.length, 0));
    if (!series.length || el.dataset.points === "0") {
      el.innerHTML = '<div class="nodata">no data for this period yet</div>';
      return;
    }
    const unit = el.dataset.unit || "";
    const scale = Number(el.dataset.scale || "1");
    const data = toColumns(series).map((col, i) => (i === 0 || scale === 1 ? col : col.map((v) => (v == null ? null : v / scale))));
    const label = labeller(series, el.dataset.label);
    const opts = {
      width: Math.max(300, el.clientWidth),
      height: Number(el.dataset.height || "220"),
      series: [{}, ...series.map((s, i) => ({
        label: label(s),
        stroke: palette[i % palette.length],
        width: 1.5,
        value: (u, v) => (v == null ? "n/a" : `${v.toFixed(1)}${unit}`),
      }))],
      axes: [{}, { values: (u, vals) => vals.map((v) => `${tick(v)}${unit}`), size: axisSize }],
      scales: el.dataset.max ? { y: { range: [0, Number(el.dataset.max)] } } : {},
    };
    el.innerHTML = "";
    el.classList.add("drawn");
    new uPlot(opts, data, el);
  }

  function drawAll(root) {
    root.querySelectorAll(".chart[data-series]").forEach((el) => draw(el));
  }

  document.addEventListener("DOMContentLoaded", () => {
    drawAll(document);
    setInterval(() => drawAll(document), 30000);
  });
  document.addEventListener("htmx:afterSwap", (e) => drawAll(e.target));
})();
