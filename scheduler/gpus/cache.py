"""A probe that remembers what it last saw, so that the API's reads share one look at the GPUs.

`RecentProbe` wraps any probe. Its `snapshot()` and `topology()` read afresh, as the wrapped
probe's do, and keep what they read: the scheduler calls them on each pass that has GPU
jobs to place. `recent_snapshot()` and `recent_topology()` answer from what was kept when
it is at most `max_age_s` old (the daemon uses its tick), and read afresh, once for all the
threads that ask at that moment, when it is not: a queued job's wait reason, polled by many
clients, costs no NVML call of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from scheduler.gpus.types import GpuInfo, GpuProbe, Topology

T = TypeVar("T")


class _Kept(Generic[T]):
    """The last value a read returned, with the moment that read began."""

    def __init__(self, read: Callable[[], T], clock: Callable[[], float]) -> None:
        self._read, self._clock = read, clock
        self._kept: tuple[float, T] | None = None
        self._lock = threading.Lock()

    def fresh(self) -> tuple[float, T]:
        began = self._clock()
        value = self._read()
        kept = self._kept
        if kept is None or kept[0] <= began:  # a slower, older read finishing late does not replace a newer one
            self._kept = (began, value)
        return began, value

    def recent(self, max_age_s: float) -> tuple[float, T]:
        kept = self._kept
        if kept is None or self._clock() - kept[0] > max_age_s:
            with self._lock:  # one read for every thread that finds it too old at the same moment
                kept = self._kept
                if kept is None or self._clock() - kept[0] > max_age_s:
                    return self.fresh()
        return kept


class RecentProbe:
    """A GpuProbe whose last snapshot and topology can be shared while they are at most `max_age_s` old."""

    def __init__(self, probe: GpuProbe, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.probe = probe
        self.max_age_s = max_age_s
        self._snapshot = _Kept(probe.snapshot, clock)
        self._topology = _Kept(probe.topology, clock)

    @property
    def description(self) -> str:
        return self.probe.description

    def snapshot(self) -> list[GpuInfo]:
        return list(self._snapshot.fresh()[1])

    def topology(self) -> Topology:
        return dict(self._topology.fresh()[1])

    def recent_snapshot(self) -> tuple[float, list[GpuInfo]]:
        """When the last snapshot was taken (the clock's time) and the snapshot, if it is at most
        max_age_s old; else the same of a fresh one."""
        taken_at, gpus = self._snapshot.recent(self.max_age_s)
        return taken_at, list(gpus)

    def recent_topology(self) -> Topology:
        return dict(self._topology.recent(self.max_age_s)[1])

    def close(self) -> None:
        self.probe.close()
