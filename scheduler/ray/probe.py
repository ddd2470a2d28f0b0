"""The GPUs of a Ray cluster as one GpuProbe: every usable node's, node-qualified, one call per node."""

from __future__ import annotations

import threading
from typing import Any

from scheduler.gpus.types import GpuInfo, ProbeError, Topology
from scheduler.ray.cluster import ANSWER_WAIT_S, RayCluster


class RayProbe:
    """scheduler.gpus.types.GpuProbe over every usable node of the cluster: node-qualified GPUs, one call per node."""

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster
        self._topology: Topology = {}
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        usable = self.cluster.usable()
        gpus = sum(s.gpus for s in usable)
        text = (
            f"Ray cluster at {self.cluster.address}: {len(usable)} node{'' if len(usable) == 1 else 's'}, {gpus} GPUs"
        )
        unusable = len(self.cluster.problems)
        return text + (f" ({unusable} node{'' if unusable == 1 else 's'} not used: see /gpus)" if unusable else "")

    def snapshot(self) -> list[GpuInfo]:
        """Every usable node's GPUs. A node that does not answer in time is left out this tick (its leases stay);
        ProbeError when no node answers at all, so that the loop keeps what it knows and skips a tick."""
        self.cluster.refresh()
        usable = self.cluster.usable()
        answers = self.cluster.gather(
            "reading", {s.node: (lambda a: a.reading.remote(), None) for s in usable}, ANSWER_WAIT_S
        )
        gpus: list[GpuInfo] = []
        topology: Topology = {}
        for state in usable:
            answer = answers.get(state.node, (None, None))[0]
            if answer is None or isinstance(answer, BaseException):
                continue
            state.gpus = len(answer[0])
            gpus += answer[0]
            topology.update(answer[1])
        if usable and not any(a is not None and not isinstance(a, BaseException) for a, _ in answers.values()):
            raise ProbeError(f"no node of the Ray cluster at {self.cluster.address} answered in {ANSWER_WAIT_S:g} s")
        with self._lock:
            self._topology = topology
        return gpus

    def topology(self) -> Topology:
        """The links of the last snapshot's GPUs (within each node; none across nodes)."""
        with self._lock:
            return dict(self._topology)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node as GET /gpus shows it (server.services.machine.cluster_nodes)."""
        with self.cluster._lock:
            return [s.public() for s in self.cluster.nodes.values()]

    def close(self) -> None:
        pass  # the executor closes the cluster
