"""Why a queued GPU job is not running, in one line a person can act on (GET /jobs' wait reasons).

Pure, beside the planner (scheduler.policy.placement) whose rules it puts in words: the GPUs that do not
qualify and why, on one machine or, on a Ray cluster, per node and for a job across nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from scheduler.gpus.types import GpuInfo
from scheduler.policy.gpu_pool import fits, gang_shape
from scheduler.policy.placement import QueuedJob
from worker.spec.units import gib_text


def node_words(node: str) -> str:
    """A node as a person reads it in a reason: the first 8 characters of its Ray id."""
    return node[:8]


def explain_wait(job: QueuedJob, gpus: Sequence[GpuInfo], holders: Mapping[str, int], margin_bytes: int = 0) -> str:
    """Why a queued GPU job is not running, in one line a person can act on."""
    need = job.need_bytes + margin_bytes if job.need_bytes > 0 else 0
    with_memory = f" with {gib_text(need)} free" if need else ""

    def why_not(g: GpuInfo) -> str | None:
        gpu = f"GPU {g.index} on node {node_words(g.node)}" if g.node else f"GPU {g.index}"
        if not g.healthy:
            return f"{gpu} is unhealthy ({g.error})"
        if g.uuid in holders:
            return f"{gpu} is held by job {holders[g.uuid]}"
        if not fits(g, job.need_bytes, margin_bytes):
            return f"{gpu} has {gib_text(g.memory_free or 0)} free"
        return None

    nodes: dict[str, list[GpuInfo]] = {}
    for g in gpus:
        nodes.setdefault(g.node, []).append(g)
    if len(nodes) > 1 or any(nodes.keys() - {""}):
        return _explain_cluster(job, nodes, why_not, with_memory)
    by_index = {g.index: g for g in gpus}
    if job.gpu_ids is not None:
        reasons = []
        for i in job.gpu_ids:
            reasons.append(f"GPU {i} does not exist" if i not in by_index else why_not(by_index[i]))
        blocking = [r for r in reasons if r]
        pinned = ",".join(str(i) for i in job.gpu_ids)
        if blocking:
            return f"waiting: pinned to GPU {pinned}{with_memory}; " + "; ".join(blocking)
        return f"waiting: pinned to GPU {pinned}; free now, it starts next unless a job ahead holds them"
    reasons = [why_not(g) for g in gpus]
    ok = sum(r is None for r in reasons)
    plural = "s" if job.gpus > 1 else ""
    head = f"waiting: needs {job.gpus} GPU{plural}{with_memory}; {ok} {'has' if ok == 1 else 'have'}"
    if ok >= job.gpus:
        return head + "; a job ahead of it holds a reservation on them, or it starts at the next pass"
    return head + _listed([r for r in reasons if r])


def _listed(blocking: list[str | None]) -> str:
    return (
        " (" + "; ".join(str(r) for r in blocking[:8]) + (" …" if len(blocking) > 8 else "") + ")" if blocking else ""
    )


def _nodes_have(count: int) -> str:
    return f"{count} node has" if count == 1 else f"{count} nodes have"


def _explain_cluster(
    job: QueuedJob,
    nodes: Mapping[str, list[GpuInfo]],
    why_not: Callable[[GpuInfo], str | None],
    with_memory: str,
) -> str:
    """explain_wait on several nodes: the node closest to serving the job, or why no split of it fits."""
    reasons = {n: [why_not(g) for g in gs] for n, gs in sorted(nodes.items())}
    ok = {n: sum(r is None for r in rs) for n, rs in reasons.items()}
    ahead = "; a job ahead of it holds a reservation on them, or it starts at the next pass"
    if job.gpu_ids is not None:
        gpu_ids = job.gpu_ids  # narrowed here, where the closure below cannot see the check
        pinned = ",".join(str(i) for i in gpu_ids)

        def pins(n: str) -> list[str]:
            by_index = {g.index: g for g in nodes[n]}
            said = [
                why_not(by_index[i]) if i in by_index else f"GPU {i} does not exist on node {node_words(n)}"
                for i in gpu_ids
            ]
            return [r for r in said if r]

        best = min(reasons, key=lambda n: len(pins(n)))  # the fewest blocking reasons; ties: node id
        if pins(best):
            return f"waiting: pinned to GPU {pinned}{with_memory} on one node; " + "; ".join(pins(best))
        free = f"free now on node {node_words(best)}"
        return f"waiting: pinned to GPU {pinned}; {free}, it starts next unless a job ahead holds them"
    plural = "s" if job.gpus > 1 else ""
    largest = max(len(gs) for gs in nodes.values())
    if job.gpus <= largest:
        best = max(reasons, key=lambda n: ok[n])  # the first node id of the most qualifying
        head = f"waiting: needs {job.gpus} GPU{plural}{with_memory} on one node; node {node_words(best)} has {ok[best]}"
        if ok[best] >= job.gpus:
            return head + ahead
        return head + _listed([r for r in reasons[best] if r])
    shape = gang_shape(job.gpus, [len(gs) for gs in nodes.values()])
    if shape is None:
        k = next(k for k in range(2, job.gpus + 1) if job.gpus % k == 0 and job.gpus // k <= largest)
        have = sum(len(gs) >= job.gpus // k for gs in nodes.values())
        enough = f", and {_nodes_have(have)} that many" if k <= len(nodes) else ""
        there = "the 1 node there is" if len(nodes) == 1 else f"the {len(nodes)} nodes there are"
        return (
            f"waiting: needs {job.gpus} GPUs on nodes of at most {largest} GPUs: {job.gpus} cannot be split"
            f" evenly over {there} (the fewest even split is {k} nodes of {job.gpus // k}{enough})"
        )
    k, per = shape
    ready = sum(ok[n] >= per for n in nodes)
    head = f"waiting: needs {job.gpus} GPUs{with_memory} as {k} nodes of {per}; {_nodes_have(ready)} {per}"
    if ready >= k:
        return head + ahead
    short = sorted((n for n in nodes if ok[n] < per), key=lambda n: -ok[n])  # the nearest first
    return head + _listed([r for n in short for r in reasons[n] if r])
