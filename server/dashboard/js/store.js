// The page's copy of the daemon's state: loaded from the REST API, then kept current by the event stream.
// Views subscribe and redraw (at most a few times a second) when something they show changed.

import { getJson } from "./api.js";
import { openStream } from "./sse.js";

export const PAGE_SIZE = 100;

export const state = {
  jobs: new Map(), // id -> the job's summary (GET /jobs), kept current by `state` and record events
  page: { offset: 0, count: null, ids: [] }, // the jobs view's page of GET /jobs?order=newest: its ids, newest first
  details: new Map(), // id -> the whole job (GET /jobs/{id}), for the jobs a view opened
  series: new Map(), // id -> {metric: Map step -> record, eval: Map step -> record, last: latest metric record}
  gpus: null, // GET /gpus, its `gpus` replaced by each `gpus` event
  selected: new Set(), // the jobs ticked for the compare view
  connection: "connecting",
  alerts: [],
  lastEventId: null,
};

const listeners = new Set();
let pending = new Set();
let timer = null;

export function subscribe(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

// What changed: "jobs", "gpus", "connection", "alerts", `job:ID` (its detail), `series:ID`, `log:ID`.
export function changed(...what) {
  for (const item of what) pending.add(item);
  if (timer) return;
  timer = setTimeout(() => {
    timer = null;
    const now = pending;
    pending = new Set();
    for (const listener of listeners) listener(now);
  }, 150);
}

function later(fn, ms) {
  let handle = null;
  return () => {
    if (handle == null) handle = setTimeout(() => ((handle = null), fn()), ms);
  };
}

// The page of jobs the jobs view shows, the newest first: a job submitted since comes in at the top of the first
// page with the next read (a `state` event asks for one). Only the latest read's answer counts, and the jobs kept
// are those of the page and those another view holds (opened, ticked to compare).
let pageReads = 0;

export async function loadJobs() {
  const read = ++pageReads;
  const { offset } = state.page;
  const page = await getJson(`/jobs?order=newest&offset=${offset}&limit=${PAGE_SIZE}`);
  if (read !== pageReads) return page;
  if (!page.data.length && offset > 0 && page.count > 0) return turnPage(Math.floor((page.count - 1) / PAGE_SIZE) * PAGE_SIZE);
  const seen = new Set();
  for (const summary of page.data) {
    seen.add(summary.id);
    state.jobs.set(summary.id, { ...state.jobs.get(summary.id), ...summary });
  }
  for (const id of state.jobs.keys()) if (!seen.has(id) && !state.details.has(id) && !state.selected.has(id)) state.jobs.delete(id);
  state.page = { offset, count: page.count, ids: page.data.map((job) => job.id) };
  changed("jobs");
  return page;
}

export function turnPage(offset) {
  state.page.offset = Math.max(0, offset);
  return loadJobs();
}

export async function loadJob(id) {
  const job = await getJson(`/jobs/${id}`);
  state.details.set(id, job);
  state.jobs.set(id, { ...state.jobs.get(id), ...job });
  changed(`job:${id}`, "jobs");
  return job;
}

export async function loadGpus() {
  state.gpus = await getJson("/gpus");
  changed("gpus");
  return state.gpus;
}

function emptySeries() {
  return { metric: new Map(), eval: new Map(), last: null };
}

function addRecord(series, record) {
  const step = record.current_steps;
  if (step == null) return;
  if (record.kind === "metric") {
    series.metric.set(step, record);
    if (!series.last || step >= series.last.current_steps) series.last = record;
  } else if (record.kind === "eval") {
    series.eval.set(step, record);
  }
}

// A job's records (each step once: GET /jobs/{id}/metrics leaves out steps a later attempt trained again),
// merged with what the stream brought while the request was on its way.
const seriesLoads = new Map();
const POINTS = 2000;

// `points`: a curve's most points; the table's sparklines ask for fewer than a job's chart.
export function loadSeries(id, points = POINTS) {
  // One request per job at a time, however many redraws ask for it meanwhile.
  if (!seriesLoads.has(id)) seriesLoads.set(id, readSeries(id, points).finally(() => seriesLoads.delete(id)));
  return seriesLoads.get(id);
}

export function seriesLoading(id) {
  return seriesLoads.has(id);
}

// Records the stream brings for a job whose first read is on its way: without a place to go they would be
// dropped, and one committed just after the server read the metrics would be missing from the chart for good.
const arriving = new Map();

async function readSeries(id, points) {
  const meanwhile = emptySeries();
  if (!state.series.has(id)) arriving.set(id, meanwhile);
  let data;
  try {
    // Every record, each curve thinned on the server to at most `points` (its first, its last, each bucket's
    // lowest and highest): a job of 100,000 records reaches its last step, in one answer of bounded size.
    ({ data } = await getJson(`/jobs/${id}/metrics?points=${points}`));
  } finally {
    arriving.delete(id);
  }
  const fresh = emptySeries();
  for (const record of data) addRecord(fresh, record);
  let newest = -1; // a loop, not Math.max(...keys): a spread of many thousands of arguments overflows the stack
  for (const step of [...fresh.metric.keys(), ...fresh.eval.keys()]) if (step > newest) newest = step;
  for (const old of [state.series.get(id), meanwhile]) {
    if (!old) continue;
    for (const record of [...old.metric.values(), ...old.eval.values()]) {
      if (record.current_steps > newest) addRecord(fresh, record);
    }
  }
  state.series.set(id, fresh);
  changed(`series:${id}`, "jobs");
  return fresh;
}

export function sorted(map) {
  return [...map.values()].sort((a, b) => (a.current_steps ?? 0) - (b.current_steps ?? 0));
}

const reloadJobs = later(() => loadJobs().catch(report), 400);
const reloadGpus = later(() => loadGpus().catch(report), 400);
const reloadDetail = new Map();

function refreshDetail(id) {
  if (!state.details.has(id)) return;
  if (!reloadDetail.has(id)) reloadDetail.set(id, later(() => loadJob(id).catch(report), 300));
  reloadDetail.get(id)();
}

function applyRecord(kind, { job_id: id, attempt, record }) {
  const job = state.jobs.get(id);
  if (kind === "start") {
    // An attempt began: its row in the attempts table; a later one may train again steps the last one did,
    // so its records are read afresh (each step once).
    refreshDetail(id);
    if (attempt > 1 && state.series.has(id)) loadSeries(id).catch(report);
  }
  const series = state.series.get(id) ?? arriving.get(id);
  if (series) addRecord(series, { kind, ...record });
  if (job && record.current_steps != null && (kind === "metric" || kind === "eval")) {
    const total = record.total_steps ?? job.progress?.total_steps ?? null;
    job.progress = {
      current_steps: record.current_steps,
      total_steps: total,
      percentage: total ? Math.round((10000 * record.current_steps) / total) / 100 : null,
    };
    if (kind === "metric" && record.loss != null) job.loss = record.loss;
  }
  if (kind === "end" || kind === "checkpoint") refreshDetail(id);
  changed("jobs", `series:${id}`, `log:${id}`);
}

function applyState({ job_id: id, state: jobState, reason }) {
  const job = state.jobs.get(id);
  if (job) Object.assign(job, { state: jobState, reason });
  reloadJobs(); // its GPUs, the others' wait reasons, a job submitted elsewhere
  reloadGpus();
  refreshDetail(id);
  changed("jobs", `log:${id}`);
}

export function applyEvent({ id, event, data }) {
  if (id != null) state.lastEventId = id;
  if (event === "state") applyState(data);
  else if (["start", "metric", "eval", "checkpoint", "end"].includes(event)) applyRecord(event, data);
  else if (event === "gpus" && state.gpus) {
    state.gpus = { ...state.gpus, gpus: data.gpus };
    changed("gpus");
  } else if (event === "alert") {
    state.alerts.push(data);
    changed("alerts");
  }
}

export function report(error) {
  console.error(error);
  state.alerts.push({ alert: "error", message: String(error.message || error) });
  changed("alerts");
}

// Opened before the first reads, so that what happens while they are on their way arrives as events;
// `ready` resolves once the stream answered (or failed to), when the reads may start.
export function connect() {
  let everLive = false;
  let answered;
  const ready = new Promise((resolve) => (answered = resolve));
  const stream = openStream("/events", {
    onEvent: applyEvent,
    onStatus: (connection) => {
      answered();
      if (connection === "live" && everLive && state.lastEventId == null) reloadJobs(); // no cursor to resume from
      if (connection === "live") everLive = true;
      state.connection = connection;
      changed("connection");
    },
  });
  return { stream, ready };
}
