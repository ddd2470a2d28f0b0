"""Placement: which queued jobs start now, on which GPUs or CPU slots.

A pure function over plain data (STYLE.md 9), so a test states a situation in a
few lines. Order is priority (high first), then submit order. GPU jobs are
placed strictly in that order: when the head GPU job does not fit, no GPU job
behind it jumps ahead (no starvation of large jobs); CPU-slot jobs queue
separately since they compete for nothing a GPU job needs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from scheduler.probe import GpuInfo


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    priority: int
    seq: int  # submit order; the job id serves
    gpus: int


@dataclass(frozen=True)
class Placement:
    job_id: int
    resources: tuple[str, ...]  # GPU UUIDs, or one CPU slot name
    cuda_visible_devices: str | None  # PCI-ordered indices, "" for a CPU slot


def cpu_slot_names(count: int) -> list[str]:
    return [f"cpu-{i}" for i in range(count)]


def queue_order(queue: Sequence[QueuedJob]) -> list[QueuedJob]:
    return sorted(queue, key=lambda j: (-j.priority, j.seq))


def place(
    queue: Sequence[QueuedJob], gpus: Sequence[GpuInfo], leased: Collection[str], cpu_slots: int
) -> list[Placement]:
    """Start as many jobs as fit now, never on a leased GPU or an unhealthy one."""
    free_gpus = sorted((g for g in gpus if g.healthy and g.uuid not in leased), key=lambda g: g.index)
    free_slots = [s for s in cpu_slot_names(cpu_slots) if s not in leased]
    placements: list[Placement] = []
    gpu_head_blocked = False
    for job in queue_order(queue):
        if job.gpus == 0:
            if free_slots:
                placements.append(Placement(job.job_id, (free_slots.pop(0),), ""))
            continue
        if gpu_head_blocked:
            continue
        if job.gpus > len(free_gpus):
            gpu_head_blocked = True
            continue
        chosen, free_gpus = free_gpus[: job.gpus], free_gpus[job.gpus :]
        placements.append(Placement(job.job_id, tuple(g.uuid for g in chosen), ",".join(str(g.index) for g in chosen)))
    return placements
