"""Placement: which queued jobs start now, on which GPUs or CPU slots, of one machine or of a pool.

A pure function over plain data (STYLE.md 9), so a test states a situation in a
few lines and a benchmark runs it at 100,000 jobs. This module walks the queue; the
GPUs per node are scheduler.policy.gpu_pool's, the set a job takes on a node
scheduler.policy.gpu_sets'. The policy:

- order: priority (high first), then submit order;
- a GPU qualifies when no lease holds it (whatever NVML says: a job started a
  second ago has not allocated yet), it is healthy, and its free memory covers
  the job's per-GPU estimate plus a margin, so foreign processes count;
- a job's GPUs come from one node (`GpuInfo.node`; "" on the daemon's own
  machine), the node with the fewest qualifying GPUs that suffice (then the
  node id), so whole nodes stay free for big jobs;
- a job larger than every node is a gang: the fewest nodes k that split it
  evenly, gpus // k GPUs on each of k nodes, all or nothing (`Placement.shares`);
- a job pinned to `gpu_ids` gets exactly those indices on one node (the first
  node by id where they all qualify) or waits;
- for several GPUs on a node, the closest set wins (NVLink, then the nearest
  common PCIe ancestor), then the smallest GPUs that fit (big GPUs stay free for
  big jobs); pairs across nodes are never compared;
- the first GPU job that cannot start gets a reservation: the GPUs it will take
  when they free (a gang's on several nodes). Jobs behind it backfill only onto
  GPUs outside the reservation, so they never delay it and large jobs are never
  starved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import ParamSpec

from scheduler.gpus.types import GpuInfo
from scheduler.policy.gpu_pool import GpuPool, Parts, room

_NEVER = float("inf")
P = ParamSpec("P")


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
    """One node's part of a gang: its GPUs (node-qualified uuids) and that node's CUDA_VISIBLE_DEVICES."""

    node: str
    resources: tuple[str, ...]
    cuda_visible_devices: str


@dataclass(frozen=True)
class Placement:
    job_id: int
    resources: tuple[str, ...]  # GPU UUIDs (a gang's: every share's, in node-rank order), or one CPU slot name
    # PCI-ordered indices, "" for a CPU slot; a gang's: "node:0,1;node:0,1" (what the attempt row shows)
    cuda_visible_devices: str | None
    # Per GPU, what the least free of the chosen GPUs offers beyond the margin, for auto_micro_batch
    # (scheduler.policy.attempt_spec); None for a CPU slot or an unknown free memory. What NVML said, not the decision:
    # not compared.
    room_bytes: int | None = field(default=None, compare=False)
    node: str = ""  # the node of a one-node placement; a gang's first share's
    shares: tuple[NodeShare, ...] = ()  # a gang's parts in node-rank order; () on one node


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    reserved_for: int | None = None  # the head job holding a reservation
    reserved: frozenset[str] = frozenset()


def cpu_slot_names(count: int) -> list[str]:
    return [f"cpu-{i}" for i in range(count)]


@dataclass(frozen=True)
class QueueShape:
    """How many queued jobs want GPUs and how many a CPU slot: what decides whether the queue is worth reading."""

    gpu_jobs: int
    cpu_jobs: int


def can_place_any(gpus: Sequence[GpuInfo], leased: Collection[str], cpu_slots: int, waiting: QueueShape) -> bool:
    """Whether any queued job could start now: a CPU job and a free CPU slot, or a GPU job and a healthy GPU that
    no job holds. When not, `plan` would place nothing, however long the queue: the loop does not read it (20,000
    queued jobs cost the scheduler about half a second of the daemon's interpreter a tick to read)."""
    if waiting.cpu_jobs and any(s not in leased for s in cpu_slot_names(cpu_slots)):
        return True
    return bool(waiting.gpu_jobs) and any(g.healthy and g.uuid not in leased for g in gpus)


def queue_order(queue: Sequence[QueuedJob]) -> list[QueuedJob]:
    """Priority (high first), then seq: the order of `sorted(key=(-priority, seq))`, in two stable sorts.

    The store hands the queue in id (= seq) order, so the first sort meets sorted input and
    costs one comparison a job; 100,000 jobs sort in about a third of the time of a tuple key.
    """
    ordered = sorted(queue, key=attrgetter("seq"))
    ordered.sort(key=attrgetter("priority"), reverse=True)  # reverse keeps equal priorities in seq order
    return ordered


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
    pool = GpuPool(gpus, set(leased), margin_bytes, topology)
    free_slots = [s for s in cpu_slot_names(cpu_slots) if s not in pool.leased]
    # Within a pass GPUs only go: a job that found none fails again, and so does any job of its
    # shape that needs more memory. So the smallest need that failed, per shape, answers for
    # all the rest, which keeps a pass over 100,000 queued jobs to a few tries (and the walk
    # over the rest to a lookup a job: keyed by the GPU count alone for the unpinned).
    failed: defaultdict[int, float] = defaultdict(lambda: _NEVER)
    failed_pinned: dict[tuple[int, tuple[int, ...]], float] = {}
    gpus_done = pool.exhausted(reservation_taken=False)
    for job in queue_order(queue):
        n = job.gpus
        if n == 0:
            if free_slots:
                result.placements.append(Placement(job.job_id, (free_slots.pop(0),), ""))
            elif gpus_done:
                break  # nothing left to give anyone, and nothing left to reserve
            continue
        if gpus_done:
            if not free_slots:
                break
            continue
        if job.gpu_ids is None:
            if job.need_bytes >= failed[n]:
                continue
        elif job.need_bytes >= failed_pinned.get((n, job.gpu_ids), _NEVER):
            continue
        parts = pool.give(job)
        if parts is not None:
            result.placements.append(_placement(job.job_id, parts, margin_bytes))
        else:
            if job.gpu_ids is None:
                failed[n] = job.need_bytes
            else:
                failed_pinned[n, job.gpu_ids] = job.need_bytes
            if result.reserved_for is None:
                held = pool.reservation(job)
                if held:
                    result.reserved_for, result.reserved = job.job_id, frozenset(held)
                    pool.withhold(held)
        gpus_done = pool.exhausted(result.reserved_for is not None)
    return result


def _placement(job_id: int, parts: Parts, margin_bytes: int) -> Placement:
    """The Placement of a job given `parts`: on one node, or a gang's shares in node-rank order."""
    chosen = [g for _, gs in parts for g in gs]
    shares = tuple(NodeShare(n, tuple(g.uuid for g in gs), ",".join(str(g.index) for g in gs)) for n, gs in parts)
    visible = (
        shares[0].cuda_visible_devices
        if len(shares) == 1
        else ";".join(f"{s.node}:{s.cuda_visible_devices}" for s in shares)
    )
    return Placement(
        job_id,
        tuple(g.uuid for g in chosen),
        visible,
        room(chosen, margin_bytes),
        node=shares[0].node,
        shares=shares if len(shares) > 1 else (),
    )


def _placements_only(planner: Callable[P, Plan]) -> Callable[P, list[Placement]]:
    """`planner` answering only its placements, with the same parameters (not restated, so they cannot drift)."""

    def place(*args: P.args, **kwargs: P.kwargs) -> list[Placement]:
        return planner(*args, **kwargs).placements

    return place


# What most callers need of a plan: the jobs that start now (plan's parameters).
place = _placements_only(plan)
