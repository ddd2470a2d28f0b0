// Small DOM and formatting helpers. Text always goes in as text (never as HTML): a job's name or a log line
// cannot become markup, and the page's CSP forbids inline script and style anyway.

export function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "style") Object.assign(el.style, value); // CSSOM, which the CSP allows
    else if (key in el && !svg && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  fill(el, children);
  return el;
}

export function fill(el, ...children) {
  el.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const TERMINAL = new Set(["succeeded", "failed", "oom", "cancelled"]);
export const ACTIVE = new Set(["starting", "running", "cancelling"]);

export function stateBadge(state) {
  return h("span", { class: `badge state-${state}`, "data-state": state }, state);
}

export function jobLink(job) {
  return h("a", { href: `#/jobs/${job.id}`, class: "job-link" }, h("span", { class: "muted" }, `#${job.id} `), job.name);
}

const GIB = 2 ** 30;

export function gib(bytes, digits = 1) {
  return bytes == null ? "–" : `${(bytes / GIB).toFixed(digits)} GiB`;
}

export function num(value, digits = 4) {
  if (value == null || Number.isNaN(value)) return "–";
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

export function rate(value) {
  if (value == null) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(1)}k` : value.toFixed(0);
}

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const secs = seconds % 60;
  if (hours) return `${hours}h ${String(minutes).padStart(2, "0")}m`;
  if (minutes) return `${minutes}m ${String(secs).padStart(2, "0")}s`;
  return `${secs}s`;
}

export function hmsSeconds(text) {
  // The worker's "H:MM:SS" (worker.outputs.sink.hms) as seconds; null for anything else.
  const match = /^(\d+):(\d{2}):(\d{2})$/.exec(text || "");
  return match ? Number(match[1]) * 3600 + Number(match[2]) * 60 + Number(match[3]) : null;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function wallSeconds(job) {
  if (job.wall_time_s != null) return job.wall_time_s;
  if (!job.started_at) return null;
  const end = job.ended_at ? new Date(job.ended_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}
