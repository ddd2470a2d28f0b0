"""One placement pass's view of the GPUs, per node: what can still be given, and what our jobs will hand back.

Pure, for the planner (scheduler.policy.placement), whose policy it keeps: a GPU qualifies when no
lease holds it, it is healthy and its free memory covers the need plus the margin; a job's GPUs come
from the node with the fewest qualifying GPUs that suffice (then the node id); a job larger than every
node is a gang of the fewest nodes that split it evenly; the blocked head job's reservation holds
GPUs our own jobs will hand back rather than idle ones.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Sequence
from typing import Protocol

from scheduler.gpus.types import GpuInfo
from scheduler.policy.gpu_sets import Links, choose_gpus, closest_set, pick

# A job's GPUs: (node, its GPUs there) per node, in node-rank order.
Parts = list[tuple[str, list[GpuInfo]]]


class Need(Protocol):
    """What the pool reads of a queued job (scheduler.policy.placement.QueuedJob)."""

    @property
    def gpus(self) -> int: ...

    @property
    def need_bytes(self) -> int: ...

    @property
    def gpu_ids(self) -> tuple[int, ...] | None: ...


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


def gang_shape(gpus: int, node_sizes: Collection[int]) -> tuple[int, int] | None:
    """(k nodes, GPUs on each) for a job larger than every node: the fewest k that split it evenly
    over nodes that exist; None when no split fits (the job can never start here)."""
    for k in range(2, gpus + 1):
        if gpus % k == 0 and sum(size >= gpus // k for size in node_sizes) >= k:
            return k, gpus // k
    return None


class GpuPool:
    """One pass's view of the GPUs, per node: what can still be given, what our jobs will hand back."""

    def __init__(
        self,
        gpus: Sequence[GpuInfo],
        leased: set[str],
        margin_bytes: int,
        topology: Links | None,
    ) -> None:
        self.leased, self.margin, self.topology = leased, margin_bytes, topology
        self.sizes: dict[str, int] = {}  # node -> how many GPUs it has, whatever their state
        self.by_index: dict[str, dict[int, GpuInfo]] = {}
        self.free: dict[str, dict[str, GpuInfo]] = {}  # node -> givable GPUs (free, healthy, not reserved)
        self.free_mem: dict[str, list[int]] = {}  # node -> their known free memory, sorted: counts by bisect
        self.held: dict[str, list[GpuInfo]] = {}  # node -> healthy GPUs our jobs hold: free once they end
        self.givable = 0
        for g in gpus:
            self.sizes[g.node] = self.sizes.get(g.node, 0) + 1
            self.by_index.setdefault(g.node, {})[g.index] = g
            if not g.healthy:
                continue
            if g.uuid in leased:
                self.held.setdefault(g.node, []).append(g)
                continue
            self.free.setdefault(g.node, {})[g.uuid] = g
            if g.memory_free is not None:
                self.free_mem.setdefault(g.node, []).append(g.memory_free)
            self.givable += 1
        for mem in self.free_mem.values():
            mem.sort()
        self.largest = max(self.sizes.values(), default=0)
        self.shapes: dict[int, tuple[int, int] | None] = {}

    def exhausted(self, reservation_taken: bool) -> bool:
        """No GPU left to give, and no reservation left to take (taken, or nothing any job could wait for)."""
        return self.givable == 0 and (reservation_taken or not self.held)

    def shape(self, gpus: int) -> tuple[int, int] | None:
        if gpus not in self.shapes:
            self.shapes[gpus] = gang_shape(gpus, self.sizes.values())
        return self.shapes[gpus]

    def candidates(self, node: str, need_bytes: int) -> list[GpuInfo]:
        return [g for g in self.free[node].values() if fits(g, need_bytes, self.margin)]

    def best_nodes(self, n: int, need_bytes: int, k: int = 1) -> list[str]:
        """Up to k nodes with n qualifying GPUs, best fit first: the fewest qualifying, then the node id.

        The counts come from each node's sorted free memory by bisection: this runs for every
        job tried, over every node.
        """
        if need_bytes <= 0:
            counts = [(len(free), node) for node, free in self.free.items() if len(free) >= n]
        else:
            threshold = need_bytes + self.margin
            counts = [
                (c, node) for node, mem in self.free_mem.items() if (c := len(mem) - bisect_left(mem, threshold)) >= n
            ]
        if k == 1:
            return [min(counts)[1]] if counts else []
        return [node for _, node in sorted(counts)[:k]]

    def give(self, job: Need) -> Parts | None:
        """The GPUs the job takes now, per node, taken out of the pool; None when it cannot start now."""
        if self.givable == 0:
            return None
        if job.gpu_ids is not None:
            for node in sorted(self.free):
                chosen = choose_gpus(
                    job.gpus, job.gpu_ids, self.candidates(node, job.need_bytes), self.by_index[node], None
                )
                if chosen is not None:
                    return self._take([(node, chosen)])
            return None
        if job.gpus <= self.largest:
            nodes = self.best_nodes(job.gpus, job.need_bytes)
            if not nodes:
                return None
            chosen = choose_gpus(job.gpus, None, self.candidates(nodes[0], job.need_bytes), {}, self.topology)
            return None if chosen is None else self._take([(nodes[0], chosen)])
        shape = self.shape(job.gpus)
        if shape is None:
            return None
        k, per = shape
        nodes = self.best_nodes(per, job.need_bytes, k)
        if len(nodes) < k:
            return None
        return self._take([(n, pick(self.candidates(n, job.need_bytes), per, self.topology)) for n in nodes])

    def _take(self, parts: Parts) -> Parts:
        self._drop([g for _, gs in parts for g in gs])
        return parts

    def _drop(self, gone: Collection[GpuInfo]) -> None:
        for g in gone:
            node_free = self.free.get(g.node)
            if node_free is None or g.uuid not in node_free:
                continue
            del node_free[g.uuid]
            self.givable -= 1
            if g.memory_free is not None:
                mem = self.free_mem[g.node]
                del mem[bisect_left(mem, g.memory_free)]
            if not node_free:
                del self.free[g.node]
                self.free_mem.pop(g.node, None)

    def withhold(self, reserved: Collection[str]) -> None:
        """The reservation's GPUs are given to no one else this pass."""
        self._drop([g for node_free in self.free.values() for g in node_free.values() if g.uuid in reserved])

    def reservation(self, job: Need) -> set[str]:
        """The GPUs the blocked head job will take once our own jobs free them.

        Only GPUs that fit now or that one of our jobs holds count: those free when our
        jobs end. A GPU that a foreign process fills may never free, so it is never
        waited for, and holding other GPUs idle for it would waste them.
        """
        nodes = sorted(set(self.free) | set(self.held))
        pools = {n: self._pool(n, job.need_bytes) for n in nodes}
        if job.gpu_ids is not None:
            for n in nodes:
                wanted = {self.by_index[n][i].uuid for i in job.gpu_ids if i in self.by_index[n]}
                pool = [g for g in pools[n][0] + pools[n][1] if g.uuid in wanted]
                if pool and len(pool) == len(job.gpu_ids):
                    return {g.uuid for g in pool}
            return set()
        if job.gpus <= self.largest:
            k, per = 1, job.gpus
        elif (shape := self.shape(job.gpus)) is not None:
            k, per = shape
        else:
            return set()
        # Wait for GPUs our jobs will hand back rather than hold idle ones: every idle GPU held is wasted time.
        later = [n for n in nodes if len(pools[n][1]) >= per]
        mixed = [n for n in nodes if len(pools[n][1]) < per <= len(pools[n][0]) + len(pools[n][1])]
        chosen = (later + mixed)[:k]
        if len(chosen) < k:
            return set()
        held: set[str] = set()
        for n in chosen:
            now, then = pools[n]
            held |= {g.uuid for g in closest_set(then if len(then) >= per else now + then, per, self.topology)}
        return held

    def _pool(self, node: str, need_bytes: int) -> tuple[list[GpuInfo], list[GpuInfo]]:
        now = self.candidates(node, need_bytes) if node in self.free else []
        later = [g for g in self.held.get(node, []) if could_ever_fit(g, need_bytes, self.margin)]
        return now, later
