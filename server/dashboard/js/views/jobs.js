// The jobs table, a page at a time and the newest first: state, GPUs, progress with ETA, a loss sparkline,
// tokens/s, and why a job waits; how many jobs there are, which of them the page shows, and the pager.

import { sparkline } from "../charts.js";
import { duration, fill, h, hmsSeconds, jobLink, num, rate, stateBadge, TERMINAL, wallSeconds } from "../dom.js";
import { changed, loadJobs, loadSeries, PAGE_SIZE, report, seriesLoading, sorted, state, turnPage } from "../store.js";

const grouped = new Intl.NumberFormat("en-US");
const SPARK_POINTS = 200; // a sparkline is 96 pixels wide
const SPARK_READS = 4; // at once: a page turned past quickly leaves no queue of reads behind

// A job across Ray nodes saw "NODE:0,1;NODE:0,1": each node by the first 8 characters of its id.
export function devicesText(visible) {
  return visible
    .split(";")
    .map((part) => (part.includes(":") ? `${part.slice(0, part.indexOf(":")).slice(0, 8)}${part.slice(part.indexOf(":"))}` : part))
    .join("; ");
}

export function gpuText(job, gpus) {
  const held = job.bound_resources || [];
  if (held.length) {
    if (held.every((r) => r.startsWith("cpu-"))) return `CPU ${held.map((r) => r.slice(4)).join(", ")}`;
    // On a Ray cluster a GPU is NODE/UUID, and shown as its node's short id and its index there.
    const index = new Map((gpus?.gpus || []).map((g) => [g.uuid, g.node ? `${g.node.slice(0, 8)}:${g.index}` : g.index]));
    return `GPU ${held.map((r) => index.get(r) ?? r).join(", ")}`;
  }
  if (job.gpus === 0) return "CPU";
  return TERMINAL.has(job.state) && job.cuda_visible_devices ? `GPU ${devicesText(job.cuda_visible_devices)}` : `${job.gpus} GPU`;
}

function progressCell(job, series) {
  const p = job.progress;
  const pct = p?.percentage ?? (job.state === "succeeded" ? 100 : 0);
  const bar = h("div", { class: "bar" }, h("div", { class: `fill state-${job.state}`, style: { width: `${Math.min(pct, 100)}%` } }));
  const steps = p ? `${p.current_steps}/${p.total_steps ?? "?"}` : "–";
  let eta = "";
  if (job.state === "running" && series?.last?.remaining_time) eta = `ETA ${duration(hmsSeconds(series.last.remaining_time))}`;
  else if (TERMINAL.has(job.state) && job.started_at) eta = `took ${duration(wallSeconds(job))}`;
  return [bar, h("div", { class: "bar-text" }, h("span", {}, steps), h("span", { class: "muted" }, eta))];
}

function note(job) {
  if (job.state === "queued") return job.waiting || "queued";
  if (job.stalled_for_s) return `no record for ${duration(job.stalled_for_s)}: stalled?`;
  if (job.state === "succeeded") return "";
  return job.reason || "";
}

function makeRow(job) {
  const box = h("input", {
    type: "checkbox",
    "aria-label": `select job ${job.id} to compare`,
    checked: state.selected.has(job.id),
    onchange: (event) => {
      if (event.target.checked) state.selected.add(job.id);
      else state.selected.delete(job.id);
      changed("selection");
    },
  });
  const cells = {};
  for (const name of ["state", "gpus", "progress", "loss", "spark", "throughput", "note"]) cells[name] = h("td", { class: `col-${name}` });
  const row = h("tr", { "data-job": job.id }, h("td", { class: "col-pick" }, box), h("td", { class: "col-name" }, jobLink(job)), ...Object.values(cells));
  return { row, cells, box };
}

function updateRow({ cells, box }, job) {
  const series = state.series.get(job.id);
  box.checked = state.selected.has(job.id);
  fill(cells.state, stateBadge(job.state));
  fill(cells.gpus, gpuText(job, state.gpus));
  fill(cells.progress, progressCell(job, series));
  fill(cells.loss, num(job.loss));
  fill(cells.spark, series ? sparkline(sorted(series.metric).map((r) => r.loss)) : "");
  fill(cells.throughput, job.state === "running" ? rate(series?.last?.throughput) : "–");
  fill(cells.note, note(job));
  cells.note.title = note(job);
}

export function jobsView(root) {
  const rows = new Map();
  const tbody = h("tbody");
  const counts = h("div", { class: "counts", title: "the states of the jobs on this page" });
  const total = h("span", { class: "total", "data-total": "" });
  const shown = h("span", { class: "muted showing" });
  const newer = h("button", { "data-page": "newer", onclick: () => turnPage(state.page.offset - PAGE_SIZE).catch(report) }, "← Newer");
  const older = h("button", { "data-page": "older", onclick: () => turnPage(state.page.offset + PAGE_SIZE).catch(report) }, "Older →");
  const pager = h("div", { class: "pager" }, total, shown, newer, older);
  const compare = h("button", { class: "primary", onclick: () => (location.hash = `#/compare?ids=${[...state.selected].join(",")}`) });
  const empty = h("p", { class: "empty", hidden: true }, "No jobs yet. Submit one: ftq submit job.yaml");
  fill(
    root,
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), pager, counts, compare),
    h(
      "table",
      { class: "jobs" },
      h("thead", {}, h("tr", {}, ...["", "Job", "State", "GPUs", "Progress", "Loss", "", "Tokens/s", "Waiting / reason"].map((t) => h("th", {}, t)))),
      tbody,
    ),
    empty,
  );

  function render() {
    const jobs = state.page.ids.map((id) => state.jobs.get(id)).filter(Boolean);
    const onPage = new Set(state.page.ids);
    for (const [id, entry] of rows) if (!onPage.has(id)) (entry.row.remove(), rows.delete(id));
    jobs.forEach((job, i) => {
      let entry = rows.get(job.id);
      if (!entry) rows.set(job.id, (entry = makeRow(job)));
      if (tbody.children[i] !== entry.row) tbody.insertBefore(entry.row, tbody.children[i] || null);
      updateRow(entry, job);
    });
    const byState = {};
    for (const job of jobs) byState[job.state] = (byState[job.state] || 0) + 1;
    fill(counts, Object.entries(byState).map(([s, n]) => h("span", { class: `count state-${s}` }, `${n} ${s}`)));
    fill(compare, `Compare selected (${state.selected.size})`);
    compare.disabled = state.selected.size === 0;
    empty.hidden = jobs.length > 0;
    const { offset, count } = state.page;
    pager.hidden = !count;
    fill(total, `${grouped.format(count ?? 0)} job${count === 1 ? "" : "s"}`);
    fill(shown, jobs.length ? `showing ${grouped.format(offset + 1)}–${grouped.format(offset + jobs.length)}, newest first` : "");
    newer.disabled = offset === 0;
    older.disabled = offset + jobs.length >= (count ?? 0);
  }

  // The sparklines of the page's jobs, a few reads at a time, each for a job still on the page when its turn comes.
  let reading = 0;
  let mounted = true;
  const failed = new Set();
  function readSparklines() {
    while (mounted && reading < SPARK_READS) {
      const id = state.page.ids.find((id) => {
        const job = state.jobs.get(id);
        return job && job.state !== "queued" && !state.series.has(id) && !seriesLoading(id) && !failed.has(id);
      });
      if (id == null) return;
      reading += 1;
      loadSeries(id, SPARK_POINTS)
        .catch((error) => (failed.add(id), report(error)))
        .finally(() => ((reading -= 1), readSparklines()));
    }
  }

  loadJobs().catch(report);
  render();
  return {
    update(what) {
      // A job of the page that started since (or arrived by an event, or a page turned to): its sparkline.
      if (what.has("jobs")) readSparklines();
      if ([...what].some((w) => w === "jobs" || w === "gpus" || w === "selection" || w.startsWith("series:"))) render();
    },
    unmount() {
      mounted = false;
    },
  };
}
