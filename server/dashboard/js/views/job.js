// One job: its loss, eval loss and learning-rate curves across attempts (restarts marked), its attempts, its
// worker's log followed live, and the cancel and requeue buttons.

import { postJson, getText } from "../api.js";
import { align, lineChart } from "../charts.js";
import { duration, fill, gib, h, hmsSeconds, num, rate, stateBadge, when, wallSeconds } from "../dom.js";
import { loadJob, loadSeries, report, sorted, state } from "../store.js";
import { devicesText, gpuText } from "./jobs.js";

const CANCELLABLE = new Set(["queued", "starting", "running"]);
const REQUEUEABLE = new Set(["failed", "oom", "cancelled"]);
const LOG_LINES = 400;

// Where each attempt after the first took over: the step it resumed from (0 when it started afresh).
export function restartMarks(attempts) {
  return attempts
    .filter((a) => a.number > 1)
    .map((a) => ({ x: a.resumed_from_step ?? 0, label: `attempt ${a.number}` }));
}

function settingsText(settings) {
  if (!settings) return "–";
  return Object.entries(settings)
    .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join("\n");
}

function attemptsTable(attempts) {
  return h(
    "table",
    { class: "attempts" },
    h("thead", {}, h("tr", {}, ...["#", "State", "GPUs", "Started", "Steps", "Settings", "Peak memory", "Exit"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      attempts.map((a) =>
        h(
          "tr",
          {},
          h("td", {}, a.number),
          h("td", {}, stateBadge(a.state)),
          h("td", {}, (a.node && !(a.cuda_visible_devices || "").includes(":") ? `node ${a.node.slice(0, 8)} · ` : "") + (a.cuda_visible_devices ? `GPU ${devicesText(a.cuda_visible_devices)}` : a.resources.join(", ") || "–")),
          h("td", {}, when(a.started_at)),
          h("td", {}, a.last_step == null ? "–" : `${a.resumed_from_step ? `${a.resumed_from_step}→` : ""}${a.last_step}/${a.total_steps ?? "?"}`),
          h("td", {}, h("pre", { class: "settings" }, settingsText(a.settings))),
          h("td", {}, a.peak_memory_gib == null ? "–" : `${a.peak_memory_gib.toFixed(2)} GiB`),
          h("td", { class: "reason" }, a.exit_code == null ? "" : `exit ${a.exit_code}`, a.reason ? h("div", { class: "muted" }, a.reason) : null),
        ),
      ),
    ),
  );
}

function facts(job, series) {
  const last = series?.last;
  const rows = [
    ["State", job.reason && job.reason !== job.state ? `${job.state}: ${job.reason}` : job.state],
    ["Waiting", job.waiting],
    ["GPUs", `${gpuText(job, state.gpus)}${job.need_gib ? ` (needs ~${job.need_gib} GiB each)` : ""}`],
    ["Progress", job.progress ? `${job.progress.current_steps}/${job.progress.total_steps ?? "?"} steps (${job.progress.percentage ?? "?"}%)` : null],
    ["Loss", job.loss == null ? null : num(job.loss)],
    ["Mean train loss", job.final_loss == null ? null : num(job.final_loss)],
    ["Tokens/s", job.state === "running" && last?.throughput ? rate(last.throughput) : null],
    ["ETA", job.state === "running" && last?.remaining_time ? duration(hmsSeconds(last.remaining_time)) : null],
    ["Wall time", job.started_at ? duration(wallSeconds(job)) : null],
    ["Submitted", when(job.submitted_at)],
    ["Started", job.started_at ? when(job.started_at) : null],
    ["Ended", job.ended_at ? when(job.ended_at) : null],
    ["Result", job.result],
    ["Model", job.spec?.model_name_or_path],
    ["Dataset", job.spec?.dataset],
  ];
  return h(
    "dl",
    { class: "facts" },
    rows.filter(([, v]) => v != null && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k }, v)]),
  );
}

export function jobView(root, id) {
  const title = h("h1");
  const actions = h("div", { class: "actions" });
  const factsBox = h("div", { class: "card" });
  const charts = h("div", { class: "charts" });
  const attemptsBox = h("div");
  const notesBox = h("div");
  const log = h("pre", { class: "log", tabindex: 0 });
  const follow = h("input", { type: "checkbox", checked: true, id: "follow" });
  fill(
    root,
    h("div", { class: "toolbar" }, h("a", { href: "#/", class: "back" }, "← Jobs"), title, actions),
    h("div", { class: "job-top" }, factsBox, charts),
    h("h2", {}, "Attempts"),
    attemptsBox,
    notesBox,
    h("div", { class: "log-head" }, h("h2", {}, "Worker log"), h("label", {}, follow, " follow")),
    log,
  );
  const lossChart = lineChart(charts, { title: "Loss", yLabel: "loss", series: [{ label: "loss" }, { label: "eval loss", color: "#dc2626", points: true, dash: [6, 4] }] });
  const lrChart = lineChart(charts, { title: "Learning rate", yLabel: "lr", height: 160, series: [{ label: "lr", color: "#16a34a" }] });
  lossChart.element.dataset.chart = "loss";
  lrChart.element.dataset.chart = "lr";

  async function act(path, verb) {
    try {
      await postJson(path);
      await loadJob(id);
    } catch (error) {
      report(new Error(`${verb}: ${error.message}`));
    }
  }

  function renderJob() {
    const job = state.details.get(id);
    if (!job) return;
    const series = state.series.get(id);
    fill(title, h("span", { class: "muted" }, `#${job.id} `), job.name, " ", stateBadge(job.state));
    fill(
      actions,
      CANCELLABLE.has(job.state) ? h("button", { class: "danger", onclick: () => act(`/jobs/${id}/cancel`, "cancel") }, "Cancel") : null,
      REQUEUEABLE.has(job.state) ? h("button", { onclick: () => act(`/jobs/${id}/requeue`, "requeue") }, "Requeue") : null,
    );
    fill(factsBox, facts(job, series));
    fill(attemptsBox, job.attempts.length ? attemptsTable(job.attempts) : h("p", { class: "muted" }, "no attempt yet"));
    fill(notesBox, job.notes?.length ? [h("h2", {}, "Notes"), h("ul", { class: "notes" }, job.notes.map((n) => h("li", {}, n)))] : null);
  }

  function renderCharts() {
    const series = state.series.get(id);
    const job = state.details.get(id);
    if (!series) return;
    const marks = job ? restartMarks(job.attempts) : [];
    const metric = sorted(series.metric);
    const loss = new Map(metric.map((r) => [r.current_steps, r.loss]));
    const evals = new Map(sorted(series.eval).map((r) => [r.current_steps, r.eval_loss]));
    lossChart.setData(align([loss, evals]), marks);
    lrChart.setData(align([new Map(metric.filter((r) => r.lr != null).map((r) => [r.current_steps, r.lr]))]), marks);
  }

  // Re-read the log's tail when the job's events arrive: at most once a second, never two reads at once.
  let lastRead = 0;
  let scheduled = null;
  function requestLog() {
    if (scheduled) return;
    scheduled = setTimeout(async () => {
      await readLog();
      lastRead = Date.now();
      scheduled = null;
    }, Math.max(0, lastRead + 1000 - Date.now()));
  }

  async function readLog() {
    try {
      const text = await getText(`/jobs/${id}/logs?tail=${LOG_LINES}`);
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      log.textContent = text || "(no log yet)";
      if (follow.checked && atBottom) log.scrollTop = log.scrollHeight;
    } catch (error) {
      log.textContent = `could not read the log: ${error.message}`;
    }
  }
  follow.addEventListener("change", () => follow.checked && (log.scrollTop = log.scrollHeight));

  Promise.all([loadJob(id), loadSeries(id)]).catch((error) => {
    if (error.status === 404) fill(root, h("p", { class: "empty" }, error.message), h("p", { class: "empty" }, h("a", { href: "#/" }, "← all jobs")));
    else report(error);
  });
  readLog().then(() => ((lastRead = Date.now()), (log.scrollTop = log.scrollHeight)));
  return {
    update(what) {
      if (what.has(`job:${id}`) || what.has("gpus")) (renderJob(), renderCharts());
      else if (what.has(`series:${id}`)) (renderCharts(), renderJob());
      // Records and state changes of this job (an ended or new attempt writes its last or first lines).
      if (what.has(`log:${id}`) || what.has(`job:${id}`)) requestLog();
    },
    unmount() {
      lossChart.destroy();
      lrChart.destroy();
    },
  };
}
