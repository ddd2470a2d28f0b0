"""Placement: which queued jobs start now, on which GPUs or CPU slots.

A pure function over plain data (STYLE.md 9), so a test states a situation in a
few lines and a benchmark runs it at 10,000 jobs. The policy:

- order: priority (high first), then submit order;
- a GPU qualifies when no lease holds it (whatever NVML says: a job started a
  second ago has not allocated yet), it is healthy, and its free memory covers
  the job's per-GPU estimate plus a margin, so foreign processes count;
- a job pinned to `gpu_ids` gets exactly those or waits;
- for several GPUs, the closest set wins (NVLink, then the nearest common PCIe
  ancestor), then the smallest GPUs that fit (big GPUs stay free for big jobs);
- the first GPU job that cannot start gets a reservation: the GPUs it will take
  when they free. Jobs behind it backfill only onto GPUs outside the
  reservation, so they never delay it and large jobs are never starved.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from scheduler.probe import GpuInfo

GiB = 1 << 30
UNKNOWN_DISTANCE = 100


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    priority: int
    seq: int  # submit order; the job id serves
    gpus: int
    need_bytes: int = 0  # per GPU, from the estimate; 0: no memory check
    gpu_ids: tuple[int, ...] | None = None  # pinned, PCI-ordered indices


@dataclass(frozen=True)
class NodeShare:
    """One node's part of a job across nodes."""

    node: str
    resources: tuple[str, ...]
    cuda_visible_devices: str


@dataclass(frozen=True)
class Placement:
    job_id: int
    resources: tuple[str, ...]  # GPU UUIDs, or one CPU slot name
    cuda_visible_devices: str | None  # PCI-ordered indices, "" for a CPU slot
    # Per GPU, what the least free of the chosen GPUs offers beyond the margin, for auto_micro_batch
    # (server.attempt_spec); None for a CPU slot or an unknown free memory. What NVML said, not the decision:
    # not compared.
    room_bytes: int | None = field(default=None, compare=False)
    node: str = ""  # the Ray node of a one-node placement; "" for this machine
    shares: tuple[NodeShare, ...] = ()  # a job across nodes: one per node, in node-rank order


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    reserved_for: int | None = None  # the head job holding a reservation
    reserved: frozenset[str] = frozenset()


def cpu_slot_names(count: int) -> list[str]:
    return [f"cpu-{i}" for i in range(count)]


def queue_order(queue: Sequence[QueuedJob]) -> list[QueuedJob]:
    return sorted(queue, key=lambda j: (-j.priority, j.seq))


def fits(gpu: GpuInfo, need_bytes: int, margin_bytes: int) -> bool:
    """Whether the GPU's free memory covers the need; unknown free memory never does (unless no need)."""
    if not gpu.healthy:
        return False
    if need_bytes <= 0:
        return True
    return gpu.memory_free is not None and gpu.memory_free >= need_bytes + margin_bytes


def room(chosen: Sequence[GpuInfo], margin_bytes: int) -> int | None:
    """Per GPU, the free memory less the margin on the least free of `chosen`; None when one's is unknown."""
    free = [g.memory_free for g in chosen]
    if not free or any(f is None for f in free):
        return None
    return max(0, min(f for f in free if f is not None) - margin_bytes)


def could_ever_fit(gpu: GpuInfo, need_bytes: int, margin_bytes: int) -> bool:
    return gpu.healthy and (need_bytes <= 0 or (gpu.memory_total or 0) >= need_bytes + margin_bytes)


def place(
    queue: Sequence[QueuedJob],
    gpus: Sequence[GpuInfo],
    leased: Collection[str],
    cpu_slots: int,
    margin_bytes: int = 0,
    topology: Mapping[tuple[str, str], int] | None = None,
) -> list[Placement]:
    return plan(queue, gpus, leased, cpu_slots, margin_bytes, topology).placements


def plan(
    queue: Sequence[QueuedJob],
    gpus: Sequence[GpuInfo],
    leased: Collection[str],
    cpu_slots: int,
    margin_bytes: int = 0,
    topology: Mapping[tuple[str, str], int] | None = None,
) -> Plan:
    """Start as many jobs as fit now without delaying the first one that does not."""
    result = Plan()
    leased = set(leased)
    free = {g.uuid: g for g in gpus if g.healthy and g.uuid not in leased}
    by_index = {g.index: g for g in gpus}
    free_slots = [s for s in cpu_slot_names(cpu_slots) if s not in leased]
    reserved: set[str] = set()
    # Jobs alike fail alike: a signature that found no GPUs this pass is not tried again,
    # which keeps a pass over 10,000 queued jobs to a few distinct shapes.
    failed: set[tuple[int, int, tuple[int, ...] | None]] = set()
    for job in queue_order(queue):
        if job.gpus == 0:
            if free_slots:
                result.placements.append(Placement(job.job_id, (free_slots.pop(0),), ""))
            continue
        if not free and result.reserved_for is not None:
            continue  # no GPU left to give, and the head already holds its reservation
        signature = (job.gpus, job.need_bytes, job.gpu_ids)
        if signature in failed:
            continue
        candidates = [g for g in free.values() if g.uuid not in reserved and fits(g, job.need_bytes, margin_bytes)]
        chosen = choose_gpus(job, candidates, by_index, topology)
        if chosen is not None:
            for g in chosen:
                del free[g.uuid]
            resources, indices = tuple(g.uuid for g in chosen), ",".join(str(g.index) for g in chosen)
            result.placements.append(Placement(job.job_id, resources, indices, room(chosen, margin_bytes)))
            continue
        failed.add(signature)
        if result.reserved_for is None:
            held = reservation(job, gpus, free, leased, margin_bytes, by_index, topology)
            if held:
                result.reserved_for, reserved = job.job_id, held
    result.reserved = frozenset(reserved)
    return result


def choose_gpus(
    job: QueuedJob,
    candidates: list[GpuInfo],
    by_index: Mapping[int, GpuInfo],
    topology: Mapping[tuple[str, str], int] | None,
) -> list[GpuInfo] | None:
    """The GPUs the job takes from `candidates`, or None when they cannot serve it."""
    if job.gpu_ids is not None:
        wanted = [by_index.get(i) for i in job.gpu_ids]
        ids = {g.uuid for g in candidates}
        if all(g is not None and g.uuid in ids for g in wanted):
            return [g for g in wanted if g is not None]
        return None
    if len(candidates) < job.gpus:
        return None
    if job.gpus == 1:
        return [min(candidates, key=_best_fit)]
    return closest_set(candidates, job.gpus, topology)


def _best_fit(g: GpuInfo) -> tuple[int, int]:
    return (g.memory_total or 0, g.index)


def distance(topology: Mapping[tuple[str, str], int] | None, a: str, b: str) -> int:
    if topology is None:
        return 0
    return topology.get((a, b), topology.get((b, a), UNKNOWN_DISTANCE))


def closest_set(candidates: list[GpuInfo], n: int, topology: Mapping[tuple[str, str], int] | None) -> list[GpuInfo]:
    """n GPUs with the smallest worst link between any two, then the smallest, then the lowest indices.

    Greedy from each seed: add the candidate nearest to the set so far. Exact for the
    island shapes real machines have (NVLink groups, PCIe switches, sockets).
    """
    ordered = sorted(candidates, key=_best_fit)
    if topology is None:
        return sorted(ordered[:n], key=lambda g: g.index)
    best: tuple[tuple[int, int, list[int]], list[GpuInfo]] | None = None
    for seed in ordered:
        chosen = [seed]
        rest = [g for g in ordered if g is not seed]
        while len(chosen) < n:
            nxt = min(rest, key=lambda g: (max(distance(topology, g.uuid, c.uuid) for c in chosen), _best_fit(g)))
            chosen.append(nxt)
            rest.remove(nxt)
        worst = max((distance(topology, a.uuid, b.uuid) for a, b in combinations(chosen, 2)), default=0)
        key = (worst, sum(g.memory_total or 0 for g in chosen), sorted(g.index for g in chosen))
        if best is None or key < best[0]:
            best = (key, chosen)
    assert best is not None
    return sorted(best[1], key=lambda g: g.index)


def reservation(
    job: QueuedJob,
    gpus: Sequence[GpuInfo],
    free: Mapping[str, GpuInfo],
    leased: Collection[str],
    margin_bytes: int,
    by_index: Mapping[int, GpuInfo],
    topology: Mapping[tuple[str, str], int] | None,
) -> set[str]:
    """The GPUs the blocked head job will take once our own jobs free them.

    Only GPUs that fit now or that one of our jobs holds count: those free when our
    jobs end. A GPU that a foreign process fills may never free, so it is never
    waited for, and holding other GPUs idle for it would waste them.
    """
    now = [g for g in free.values() if fits(g, job.need_bytes, margin_bytes)]
    later = [g for g in gpus if g.uuid in leased and could_ever_fit(g, job.need_bytes, margin_bytes)]
    pool = now + later
    if job.gpu_ids is not None:
        wanted = {by_index[i].uuid for i in job.gpu_ids if i in by_index}
        pool = [g for g in pool if g.uuid in wanted]
        return {g.uuid for g in pool} if len(pool) == len(job.gpu_ids) else set()
    if len(pool) < job.gpus:
        return set()
    # Wait for GPUs our jobs will hand back rather than hold idle ones: every idle GPU held is wasted time.
    return {g.uuid for g in closest_set(later if len(later) >= job.gpus else pool, job.gpus, topology)}


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def explain_wait(job: QueuedJob, gpus: Sequence[GpuInfo], holders: Mapping[str, int], margin_bytes: int = 0) -> str:
    """Why a queued GPU job is not running, in one line a person can act on."""
    need = job.need_bytes + margin_bytes if job.need_bytes > 0 else 0
    with_memory = f" with {_gib(need)} free" if need else ""

    def why_not(g: GpuInfo) -> str | None:
        if not g.healthy:
            return f"GPU {g.index} is unhealthy ({g.error})"
        if g.uuid in holders:
            return f"GPU {g.index} is held by job {holders[g.uuid]}"
        if not fits(g, job.need_bytes, margin_bytes):
            return f"GPU {g.index} has {_gib(g.memory_free or 0)} free"
        return None

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
    blocking = [r for r in reasons if r]
    return head + (" (" + "; ".join(blocking[:8]) + (" …" if len(blocking) > 8 else "") + ")" if blocking else "")
