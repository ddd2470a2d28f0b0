"""The machine as the daemon sees it at one moment: GPUs, who holds them, how they are linked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from scheduler.gpus.processes import descendant_pids, foreign_processes
from scheduler.gpus.types import GpuInfo
from server.db.models import GpuPublic, NodePublic


@dataclass
class Machine:
    """What the daemon knows of its GPUs at one moment: enough to admit a job or explain a wait."""

    gpus: list[GpuInfo]
    holders: dict[str, int]  # leased resource -> job id
    cpu_slots: int
    margin_bytes: int
    topology: Any = None


class LazyMachine:
    """The machine, read on first use only and then kept: most answers that could use it do not.

    `load` returns the machine and until when it may be relied on (the clock's time its GPU
    snapshot grows too old; None: always), which an answer kept for later must not outlive.
    """

    def __init__(self, load: Callable[[], tuple[Machine, float | None]]) -> None:
        self._load = load
        self._machine: Machine | None = None
        self.valid_until: float | None = None

    def __call__(self) -> Machine:
        if self._machine is None:
            self._machine, self.valid_until = self._load()
        return self._machine

    @property
    def loaded(self) -> bool:
        return self._machine is not None


# What the service takes where only some answers need the machine (a queued job's wait reason).
MachineSource = Machine | LazyMachine | None


def machine_of(source: MachineSource) -> Machine | None:
    return source() if isinstance(source, LazyMachine) else source


def recent_gpus_view(probe: Any, holders: dict[str, int], cpu_slots: int, worker_pids: set[int]) -> list[GpuPublic]:
    """The GPUs as GET /gpus shows them, from the probe's recent snapshot (at most a tick old: the scheduler's
    own, shared) rather than a fresh NVML read: for the readers that look often (GPU events, /metrics)."""
    _, gpus = probe.recent_snapshot()
    return gpus_view(Machine(gpus, holders, cpu_slots, 0, probe.recent_topology()), worker_pids)


def gpus_view(machine: Machine, worker_pids: set[int]) -> list[GpuPublic]:
    """Each GPU with its holder, its processes (foreign ones marked) and its links to the others."""
    ours = worker_pids | descendant_pids(worker_pids)
    views = []
    for gpu in machine.gpus:
        foreign = {p.pid for p in foreign_processes(gpu, ours)}
        links = {
            other.index: machine.topology.get((gpu.uuid, other.uuid), None)
            for other in machine.gpus
            if other.uuid != gpu.uuid and other.node == gpu.node and machine.topology
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


def cluster_nodes(probe: Any) -> list[NodePublic]:
    """The Ray cluster's nodes as the probe last saw them (scheduler.ray.executor.RayProbe); none on one machine."""
    inner = getattr(probe, "probe", probe)  # RecentProbe keeps the probe it caches
    nodes = getattr(inner, "nodes", None)
    return [NodePublic(**node) for node in nodes()] if callable(nodes) else []
