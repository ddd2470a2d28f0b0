"""Executors: where the scheduling loop's workers run — this machine, or the nodes of a Ray cluster.

The loop decides (what starts, what is cancelled, how an attempt ended) and the
database remembers; an executor only carries out, through the NodeSupervisor
of the machine the worker is on. `LocalExecutor` holds one in this process;
`scheduler.ray.executor.RayExecutor` talks to one in every node's agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scheduler.local.node_supervisor import NodeSupervisor, Progress
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

    def signal(self, attempt_id: int, sig: int) -> None: ...

    def settle(self, attempt_id: int) -> None:
        """Kill whatever the attempt left behind, on every node, and forget it."""
        ...

    def pids(self) -> dict[int, int]:
        """attempt id -> pid of its (first) worker."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    """Workers on the daemon's own machine: one NodeSupervisor, in this process."""

    def __init__(
        self,
        worker_module: str = "worker",
        daemon_settings: Mapping[str, str] | None = None,
        on_exit: Callable[[], None] | None = None,
        spawn: Callable[..., WorkerProcess] = spawn_worker,
    ) -> None:
        self.node = NodeSupervisor(worker_module, daemon_settings, on_exit, spawn)

    def spawn(
        self, attempt_id: int, placement: Placement, run_dir: Path, spec: dict[str, Any], cpu_threads: int | None
    ) -> list[WorkerRef]:
        if placement.shares:
            raise ValueError("a job across nodes needs a Ray cluster (FTQ_RAY_ADDRESS)")
        pid, start_time = self.node.spawn(
            attempt_id, str(run_dir), spec, placement.cuda_visible_devices or "", cpu_threads
        )
        return [WorkerRef("", pid, start_time)]

    def release(self, attempt_id: int) -> bool:
        return self.node.release(attempt_id)

    def adopt(self, attempt_id: int, run_dir: Path, workers: list[WorkerRef]) -> bool:
        alive = [self.node.adopt(attempt_id, str(run_dir), w.pid, w.start_time) for w in workers[:1]]
        return any(alive)

    def stop_unstarted(self, attempt_id: int, run_dir: Path, nodes: list[str]) -> None:
        self.node.stop_unstarted(str(run_dir))

    def progress(self, offsets: Mapping[int, int]) -> dict[int, Progress]:
        return self.node.progress(offsets)

    def signal(self, attempt_id: int, sig: int) -> None:
        self.node.signal(attempt_id, sig)

    def settle(self, attempt_id: int) -> None:
        self.node.settle(attempt_id)

    def pids(self) -> dict[int, int]:
        return self.node.pids()

    def close(self) -> None:
        """Nothing to close: the workers outlive the daemon on purpose (the next start adopts them)."""
