"""Which GPUs of one node a job takes: the pinned ones, else the closest set, then the smallest that fit.

Pure, for the planner (scheduler.policy.placement): every candidate here is on one node, so
links across nodes are never compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

from scheduler.gpus.types import GpuInfo, link_distance

Links = Mapping[tuple[str, str], int]


def choose_gpus(
    gpus: int,
    gpu_ids: tuple[int, ...] | None,
    candidates: list[GpuInfo],
    by_index: Mapping[int, GpuInfo],
    topology: Links | None,
) -> list[GpuInfo] | None:
    """The GPUs a job of `gpus` GPUs (pinned to `gpu_ids`, if given) takes from `candidates` (one node's),
    or None when they cannot serve it."""
    if gpu_ids is not None:
        wanted = [by_index.get(i) for i in gpu_ids]
        ids = {g.uuid for g in candidates}
        if all(g is not None and g.uuid in ids for g in wanted):
            return [g for g in wanted if g is not None]
        return None
    if len(candidates) < gpus:
        return None
    return pick(candidates, gpus, topology)


def pick(candidates: list[GpuInfo], n: int, topology: Links | None) -> list[GpuInfo]:
    """n of the candidates: the smallest that fits for one, the closest set for more."""
    return [min(candidates, key=_best_fit)] if n == 1 else closest_set(candidates, n, topology)


def _best_fit(g: GpuInfo) -> tuple[int, int]:
    return (g.memory_total or 0, g.index)


def distance(topology: Links | None, a: str, b: str) -> int:
    """The link between two GPUs; 0 without a topology (every set alike), LINK_UNKNOWN for a pair it lacks."""
    return 0 if topology is None else link_distance(topology, a, b)


def closest_set(candidates: list[GpuInfo], n: int, topology: Links | None) -> list[GpuInfo]:
    """n GPUs with the smallest worst link between any two, then the smallest, then the lowest indices.

    Greedy from each seed: add the candidate nearest to the set so far. Exact for the
    island shapes real machines have (NVLink groups, PCIe switches, sockets).
    """
    ordered = sorted(candidates, key=_best_fit)
    if topology is None or _alike(ordered, topology):
        # Every link the same (one NVSwitch fabric, or no topology): the greedy below would pick
        # the n smallest too, at a cost that grows with the square of the candidates.
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


def _alike(gpus: Sequence[GpuInfo], topology: Links) -> bool:
    """Whether every pair of `gpus` is as far apart as every other (stops at the first pair that differs)."""
    if len(gpus) < 3:
        return True
    first = distance(topology, gpus[0].uuid, gpus[1].uuid)
    return all(distance(topology, a.uuid, b.uuid) == first for a, b in combinations(gpus, 2))
