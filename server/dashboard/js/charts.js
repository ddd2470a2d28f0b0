// Charts: uPlot (vendored, the global `uPlot`) for the curves, a small SVG polyline for the table's sparklines.

import { h } from "./dom.js";

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];

// Vertical dashed lines where an attempt took over: marks = [{x: step, label: "attempt 2"}].
function marksPlugin(getMarks) {
  return {
    hooks: {
      draw: (u) => {
        const ctx = u.ctx;
        const { top, height } = u.bbox;
        ctx.save();
        ctx.strokeStyle = "#9ca3af";
        ctx.fillStyle = "#6b7280";
        ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
        ctx.lineWidth = devicePixelRatio;
        ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
        for (const mark of getMarks()) {
          const x = Math.round(u.valToPos(mark.x, "x", true));
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          ctx.fillText(mark.label, x + 4 * devicePixelRatio, top + 12 * devicePixelRatio);
        }
        ctx.restore();
      },
    },
  };
}

// A line chart over steps; series = [{label, color?, dash?}]. setData([xs, ys1, ys2, ...], marks).
export function lineChart(container, { title, series, height = 240, yLabel = "" }) {
  let marks = [];
  const wrap = h("div", { class: "chart" });
  container.append(wrap);
  const inner = () => Math.max(wrap.clientWidth - 16, 300); // less the card's padding
  const options = {
    title,
    width: inner(),
    height,
    scales: { x: { time: false } },
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    axes: [
      { label: "step", stroke: "#6b7280", grid: { stroke: "#eef0f3" } },
      { label: yLabel, stroke: "#6b7280", grid: { stroke: "#eef0f3" }, size: 60 },
    ],
    series: [
      { label: "step" },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || PALETTE[i % PALETTE.length],
        width: 2,
        dash: s.dash,
        spanGaps: true,
        points: { show: s.points ?? false, size: 5 },
        value: (u, v) => (v == null ? "–" : Number(v.toPrecision(4)).toString()),
      })),
    ],
    plugins: [marksPlugin(() => marks)],
  };
  const empty = [[], ...series.map(() => [])];
  const plot = new uPlot(options, empty, wrap);
  const resize = new ResizeObserver(() => {
    const width = inner();
    if (width !== plot.width) plot.setSize({ width, height });
  });
  resize.observe(wrap);
  return {
    element: wrap,
    setData(data, newMarks = []) {
      marks = newMarks;
      plot.setData(data);
      wrap.dataset.points = String(data[0].length); // what the browser tests read
      wrap.dataset.last = data[0].length ? String(data[0][data[0].length - 1]) : "";
      wrap.dataset.marks = String(marks.length);
    },
    destroy() {
      resize.disconnect();
      plot.destroy();
      wrap.remove();
    },
  };
}

// Several {step -> value} maps as uPlot's aligned arrays: the union of the steps, null where one has none.
export function align(maps) {
  const steps = [...new Set(maps.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
  return [steps, ...maps.map((m) => steps.map((s) => (m.has(s) ? m.get(s) : null)))];
}

export function sparkline(values, { width = 96, height = 24 } = {}) {
  const finite = values.filter((v) => Number.isFinite(v));
  const svg = h("svg:svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, "data-points": finite.length });
  if (finite.length < 2) return svg;
  const min = Math.min(...finite);
  const max = Math.max(...finite);
  const span = max - min || 1;
  const points = finite
    .map((v, i) => `${((i / (finite.length - 1)) * (width - 2) + 1).toFixed(1)},${(height - 2 - ((v - min) / span) * (height - 4)).toFixed(1)}`)
    .join(" ");
  svg.append(h("svg:polyline", { points, fill: "none", stroke: "#2563eb", "stroke-width": 1.5 }));
  return svg;
}
