// The GPU map: each GPU's memory (ours and foreign processes'), the job holding it, and the CPU slots.

import { fill, gib, h } from "../dom.js";
import { loadGpus, loadJobs, report, state } from "../store.js";

function holder(id) {
  if (id == null) return h("span", { class: "muted" }, "free");
  const job = state.jobs.get(id);
  return h("a", { href: `#/jobs/${id}`, class: "job-link" }, `job #${id}${job ? ` ${job.name}` : ""}`);
}

function memoryBar(gpu) {
  const total = gpu.memory_total || 0;
  const foreign = gpu.processes.filter((p) => p.foreign).reduce((sum, p) => sum + (p.used_memory || 0), 0);
  const used = gpu.memory_used || 0;
  const ours = Math.max(used - foreign, 0);
  const pct = (bytes) => `${total ? Math.min((100 * bytes) / total, 100) : 0}%`;
  return h(
    "div",
    { class: "membar", title: `${gib(used)} of ${gib(total)} used` },
    h("div", { class: "mem-ours", style: { width: pct(ours) } }),
    h("div", { class: "mem-foreign", style: { width: pct(foreign) } }),
  );
}

function processes(gpu) {
  if (!gpu.processes.length) return h("p", { class: "muted small" }, "no processes");
  return h(
    "table",
    { class: "procs" },
    h("thead", {}, h("tr", {}, h("th", {}, "pid"), h("th", {}, "process"), h("th", {}, "memory"), h("th", {}, ""))),
    h(
      "tbody",
      {},
      gpu.processes.map((p) =>
        h(
          "tr",
          { class: p.foreign ? "foreign" : "" },
          h("td", {}, p.pid),
          h("td", {}, p.name || "?"),
          h("td", {}, gib(p.used_memory, 2)),
          h("td", {}, p.foreign ? h("span", { class: "badge foreign" }, "foreign") : h("span", { class: "badge ours" }, "ftq")),
        ),
      ),
    ),
  );
}

function card(gpu) {
  return h(
    "section",
    { class: `gpu card${gpu.healthy ? "" : " unhealthy"}`, "data-gpu": gpu.index, "data-node": gpu.node || "" },
    h("header", {}, h("h2", {}, `GPU ${gpu.index}`), h("span", { class: "muted" }, gpu.name)),
    memoryBar(gpu),
    h(
      "div",
      { class: "gpu-facts" },
      h("span", {}, `${gib(gpu.memory_used)} / ${gib(gpu.memory_total)}`),
      h("span", {}, gpu.utilization == null ? "util –" : `util ${gpu.utilization}%`),
      gpu.bound_job == null ? h("span", { class: "muted" }, "free") : h("span", {}, "held by ", holder(gpu.bound_job)),
    ),
    gpu.healthy ? null : h("p", { class: "error" }, gpu.error || "unhealthy"),
    processes(gpu),
  );
}

// On a Ray cluster: one section per node (its address and whether ftq can use it), its GPUs under it.
function byNode(view) {
  const nodes = view.nodes || [];
  if (!nodes.length) {
    return view.gpus.length ? h("div", { class: "gpu-grid" }, view.gpus.map(card)) : h("p", { class: "empty" }, "No GPUs on this machine: jobs with gpus: 0 run on CPU slots.");
  }
  return nodes.map((node) => {
    const gpus = view.gpus.filter((g) => g.node === node.node);
    return h(
      "section",
      { class: "node", "data-node-section": node.node },
      h(
        "header",
        {},
        h("h2", {}, `node ${node.node.slice(0, 8)}`),
        h("span", { class: "muted" }, ` ${node.address || ""} · ${node.state}`),
      ),
      node.problem ? h("p", { class: "error" }, node.problem) : null,
      gpus.length ? h("div", { class: "gpu-grid" }, gpus.map(card)) : h("p", { class: "muted small" }, "no GPUs"),
    );
  });
}

export function gpusView(root) {
  const body = h("div");
  fill(root, h("div", { class: "toolbar" }, h("h1", {}, "GPUs")), body);

  function render() {
    const view = state.gpus;
    if (!view) return fill(body, h("p", { class: "muted" }, "reading the GPUs…"));
    const slots = Array.from({ length: view.cpu_slots }, (_, i) => `cpu-${i}`);
    fill(
      body,
      h("p", { class: "muted" }, `probe: ${view.probe}`),
      byNode(view),
      h("h2", {}, "CPU slots"),
      h(
        "div",
        { class: "slots" },
        slots.map((slot) => h("div", { class: "slot card" }, h("strong", {}, slot), " ", holder(view.cpu_slots_bound[slot]))),
      ),
    );
  }

  loadGpus().catch(report);
  loadJobs().catch(report); // the holders' names
  render();
  return {
    update(what) {
      if (what.has("gpus") || what.has("jobs")) render();
    },
    unmount() {},
  };
}
