// The dashboard's entry: hash routes (#/, #/gpus, #/jobs/ID, #/compare?ids=1,2), the connection light, alerts.

import { fill, h } from "./dom.js";
import { connect, loadGpus, report, state, subscribe } from "./store.js";
import { compareView } from "./views/compare.js";
import { gpusView } from "./views/gpus.js";
import { jobView } from "./views/job.js";
import { jobsView } from "./views/jobs.js";

const root = document.getElementById("view");
let current = null;

function route() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  current?.unmount();
  root.replaceChildren();
  let nav = "jobs";
  const job = /^\/jobs\/(\d+)$/.exec(path);
  if (job) current = jobView(root, Number(job[1]));
  else if (path === "/gpus") ((nav = "gpus"), (current = gpusView(root)));
  else if (path === "/compare") ((nav = "compare"), (current = compareView(root, query)));
  else current = jobsView(root);
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === nav);
}

const CONNECTION_TEXT = { live: "live", reconnecting: "reconnecting…", connecting: "connecting", token: "needs token" };

function showConnection() {
  const light = document.getElementById("conn");
  light.dataset.state = state.connection;
  light.textContent = CONNECTION_TEXT[state.connection] || state.connection;
}

let shown = 0;
function showAlerts() {
  const box = document.getElementById("toasts");
  for (const alert of state.alerts.slice(shown)) {
    const toast = h("div", { class: `toast ${alert.alert}`, role: "status" }, alert.message, h("button", { class: "close", "aria-label": "dismiss", onclick: () => toast.remove() }, "×"));
    box.append(toast);
    setTimeout(() => toast.remove(), alert.alert === "error" ? 15000 : 8000);
  }
  shown = state.alerts.length;
}

subscribe((what) => {
  if (what.has("connection")) showConnection();
  if (what.has("alerts")) showAlerts();
  current?.update(what);
});

async function start() {
  const { ready } = connect();
  await Promise.race([ready, new Promise((resolve) => setTimeout(resolve, 3000))]);
  window.addEventListener("hashchange", route);
  route();
  // The GPUs' indices name a job's GPUs in every view; each view reads the jobs it shows itself.
  await loadGpus().catch(report);
}

start().catch((error) => fill(root, h("p", { class: "error" }, String(error))));
