"""Executors: where the scheduling loop's workers run — this machine, or the nodes of a Ray cluster.

The loop decides (what starts, what is cancelled, how an attempt ended) and the
database remembers; an executor only carries out, through the NodeSupervisor
of the machine the worker is on. `LocalExecutor` is this process's one;
`scheduler.ray.executor.RayExecutor` talks to the one every node's agent is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scheduler.local.node_supervisor import NodeSupervisor, Progress, WorkerStart
from scheduler.local.supervisor import WorkerProcess, spawn_worker
from scheduler.policy.placement import Placement


@dataclass(frozen=True)
class WorkerRef:
    """One process of an attempt: the node it runs on ("" for this machine), its pid and start time."""

    node: str
    pid: int
    start_time: int | None


class Executor(Protocol):
    """What the scheduling loop asks of the machines its workers run on."""

    def spawn(
        self, attempt_id: int, placement: Placement, run_dir: Path, spec: dict[str, Any], cpu_threads: int | None
    ) -> list[WorkerRef]:
        """Start the attempt's workers at their gates: one, or one per node of a gang in node-rank order."""
        ...

    def release(self, attempt_id: int) -> bool:
        """Tell the attempt's workers to go; False when one is gone already."""
        ...

    def adopt(self, attempt_id: int, run_dir: Path, workers: list[WorkerRef]) -> bool:
        """Take on the workers of an attempt an earlier daemon started; False when none is alive."""
        ...

    def stop_unstarted(self, attempt_id: int, run_dir: Path, nodes: list[str]) -> None:
        """Stop the workers of an attempt whose pids were never stored (so never told to go)."""
        ...

    def progress(self, offsets: Mapping[int, int]) -> dict[int, Progress]:
        """Each attempt's new records from its offset, and whether it has ended (or lost its node)."""
        ...

    def signal(self, attempt_id: int, sig: int) -> bool:
        """Send sig to the attempt's workers; False when none of them was there to take it."""
        ...

    def settle(self, attempt_id: int) -> None:
        """Kill whatever the attempt left behind, on every node, and forget it."""
        ...

    def pids(self) -> dict[int, int]:
        """attempt id -> pid of its (first) worker."""
        ...

    def close(self) -> None: ...


class LocalExecutor(NodeSupervisor):
    """Workers on the daemon's own machine: this process's NodeSupervisor, with the loop's spawn, adopt and stop.

    Release, progress, signal, settle and pids are the NodeSupervisor's own: the loop asks them of this
    machine as an agent is asked them of its node.
    """

    def __init__(
        self,
        worker_module: str = "worker",
        daemon_settings: Mapping[str, str] | None = None,
        on_exit: Callable[[], None] | None = None,
        spawn: Callable[..., WorkerProcess] = spawn_worker,
    ) -> None:
        super().__init__(on_exit, spawn)
        self.worker_module = worker_module
        self.daemon_settings = dict(daemon_settings or {})

    def spawn(
        self, attempt_id: int, placement: Placement, run_dir: Path, spec: dict[str, Any], cpu_threads: int | None
    ) -> list[WorkerRef]:
        if placement.shares:
            raise ValueError("a job across nodes needs a Ray cluster (FTQ_RAY_ADDRESS)")
        visible = placement.cuda_visible_devices or ""
        start = WorkerStart(
            attempt_id, str(run_dir), spec, visible, cpu_threads, self.worker_module, self.daemon_settings
        )
        pid, start_time = self.start_worker(start)
        return [WorkerRef("", pid, start_time)]

    def adopt(self, attempt_id: int, run_dir: Path, workers: list[WorkerRef]) -> bool:
        alive = [self.adopt_worker(attempt_id, str(run_dir), w.pid, w.start_time) for w in workers[:1]]
        return any(alive)

    def stop_unstarted(self, attempt_id: int, run_dir: Path, nodes: list[str]) -> None:
        self.stop_unstarted_in(str(run_dir))

    def close(self) -> None:
        """Nothing to close: the workers outlive the daemon on purpose (the next start adopts them)."""
