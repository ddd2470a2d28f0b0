"""The machine as the daemon sees it at one moment: GPUs, who holds them, how they are linked."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from scheduler.probe import GpuInfo, descendant_pids, foreign_processes
from server.models import GpuPublic


@dataclass
class Machine:
    """What the daemon knows of its GPUs at one moment: enough to admit a job or explain a wait."""

    gpus: list[GpuInfo]
    holders: dict[str, int]  # leased resource -> job id
    cpu_slots: int
    margin_bytes: int
    topology: Any = None


def gpus_view(machine: Machine, worker_pids: set[int]) -> list[GpuPublic]:
    """Each GPU with its holder, its processes (foreign ones marked) and its links to the others."""
    ours = worker_pids | descendant_pids(worker_pids)
    views = []
    for gpu in machine.gpus:
        foreign = {p.pid for p in foreign_processes(gpu, ours)}
        links = {
            other.index: machine.topology.get((gpu.uuid, other.uuid), None)
            for other in machine.gpus
            if other.uuid != gpu.uuid and machine.topology
        }
        views.append(
            GpuPublic(
                **{k: v for k, v in asdict(gpu).items() if k not in ("processes",)},
                processes=[{**asdict(p), "foreign": p.pid in foreign} for p in gpu.processes],
                bound_job=machine.holders.get(gpu.uuid),
                links=links,
            )
        )
    return views
