// The compare view: the chosen jobs' loss curves overlaid, and the table of GET /compare?ids=….

import { getJson } from "../api.js";
import { align, lineChart, PALETTE } from "../charts.js";
import { duration, fill, h, jobLink, num, rate, stateBadge } from "../dom.js";
import { changed, loadJobs, loadSeries, report, sorted, state } from "../store.js";

export function parseIds(query) {
  const ids = new URLSearchParams(query).get("ids") || "";
  return [...new Set(ids.split(",").map(Number).filter((n) => Number.isInteger(n) && n > 0))];
}

const COLUMNS = [
  ["Job", (r) => jobLink(r)],
  ["State", (r) => stateBadge(r.state)],
  ["Final loss", (r) => num(r.final_loss)],
  ["Final eval loss", (r) => num(r.final_eval_loss)],
  ["Steps", (r) => (r.steps == null ? "–" : `${r.steps}/${r.total_steps ?? "?"}`)],
  ["Tokens/s", (r) => rate(r.tokens_per_s)],
  ["Peak VRAM", (r) => (r.peak_vram_gib == null ? "–" : `${r.peak_vram_gib.toFixed(2)} GiB`)],
  ["Wall time", (r) => duration(r.wall_time_s)],
  ["GPU hours", (r) => (r.gpu_hours == null ? "–" : r.gpu_hours.toFixed(3))],
  ["Attempts", (r) => r.attempts],
  ["Result", (r) => h("span", { class: "path" }, r.result || "–")],
];

export function compareView(root, query) {
  const ids = parseIds(query);
  for (const id of ids) state.selected.add(id);
  const picker = h("div", { class: "picker" });
  const charts = h("div", { class: "charts wide" });
  const table = h("div", { class: "card compare-table" });
  fill(root, h("div", { class: "toolbar" }, h("h1", {}, "Compare")), picker, table, charts);

  // Built once the jobs' names are known: uPlot's legend keeps the labels it was made with.
  let lossChart = null;
  let evalChart = null;
  function makeCharts() {
    if (lossChart || !ids.length) return;
    const series = ids.map((id, i) => ({ label: `#${id} ${state.jobs.get(id)?.name ?? ""}`, color: PALETTE[i % PALETTE.length] }));
    lossChart = lineChart(charts, { title: "Loss", yLabel: "loss", series });
    evalChart = lineChart(charts, { title: "Eval loss", yLabel: "eval loss", height: 180, series: series.map((s) => ({ ...s, points: true })) });
    lossChart.element.dataset.chart = "compare-loss";
    renderCharts();
  }

  function choose(id, on) {
    const next = on ? [...ids, id] : ids.filter((x) => x !== id);
    if (!on) state.selected.delete(id);
    location.hash = `#/compare?ids=${next.join(",")}`;
  }

  function renderPicker() {
    const jobs = [...state.jobs.values()].sort((a, b) => a.id - b.id);
    fill(
      picker,
      h("span", { class: "muted" }, ids.length ? "Jobs compared:" : "Pick the jobs to compare:"),
      jobs.map((job) =>
        h("label", { class: `chip${ids.includes(job.id) ? " on" : ""}` }, h("input", { type: "checkbox", checked: ids.includes(job.id), onchange: (e) => choose(job.id, e.target.checked) }), `#${job.id} ${job.name}`),
      ),
    );
  }

  function renderCharts() {
    if (!lossChart) return;
    const of = (id) => state.series.get(id);
    lossChart.setData(align(ids.map((id) => new Map(sorted(of(id)?.metric ?? new Map()).map((r) => [r.current_steps, r.loss])))));
    evalChart.setData(align(ids.map((id) => new Map(sorted(of(id)?.eval ?? new Map()).map((r) => [r.current_steps, r.eval_loss])))));
    evalChart.element.hidden = !ids.some((id) => of(id)?.eval.size);
  }

  let rows = null;
  async function readTable() {
    if (!ids.length) return fill(table, h("p", { class: "muted" }, "Tick two or more jobs above, or in the jobs table."));
    try {
      rows = (await getJson(`/compare?${ids.map((id) => `ids=${id}`).join("&")}`)).data;
      fill(
        table,
        h(
          "table",
          { class: "compare" },
          h("thead", {}, h("tr", {}, h("th", {}, ""), COLUMNS.map(([name]) => h("th", {}, name)))),
          h("tbody", {}, rows.map((r, i) => h("tr", { "data-job": r.id }, h("td", {}, h("span", { class: "swatch", style: { background: PALETTE[i % PALETTE.length] } })), COLUMNS.map(([, cell]) => h("td", {}, cell(r)))))),
        ),
      );
    } catch (error) {
      fill(table, h("p", { class: "error" }, `GET /compare: ${error.message}`));
    }
  }

  let again = null;
  function readTableSoon() {
    if (!again) again = setTimeout(() => ((again = null), readTable()), 500);
  }

  loadJobs().catch(report).finally(makeCharts);
  for (const id of ids) loadSeries(id).catch(report);
  readTable();
  renderPicker();
  changed("selection");
  return {
    update(what) {
      if (what.has("jobs")) renderPicker();
      if (ids.some((id) => what.has(`series:${id}`))) renderCharts();
      // A compared job changed state or ended an attempt: its figures changed.
      if (rows && what.has("jobs") && rows.some((r) => state.jobs.get(r.id)?.state !== r.state)) readTableSoon();
    },
    unmount() {
      lossChart?.destroy();
      evalChart?.destroy();
    },
  };
}
