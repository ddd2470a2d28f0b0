"""RecentProbe: the API's reads share the scheduler's snapshot while it is at most max_age_s old."""

from __future__ import annotations

import threading
import time

from scheduler.gpus.cache import RecentProbe
from scheduler.gpus.fake import FakeProbe
from worker.spec.units import GIB


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingProbe(FakeProbe):
    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.snapshots = 0

    def snapshot(self):  # type: ignore[no-untyped-def]
        self.snapshots += 1
        return super().snapshot()


def test_a_recent_snapshot_is_the_schedulers_while_at_most_max_age_old_then_a_fresh_one():
    fake, clock = CountingProbe("2x24GiB"), Clock()
    probe = RecentProbe(fake, max_age_s=1.0, clock=clock)
    probe.snapshot()  # the scheduler's pass
    fake.set(0, memory_free=GIB)
    clock.now += 1.0
    taken_at, gpus = probe.recent_snapshot()
    assert (taken_at, gpus[0].memory_free, fake.snapshots) == (100.0, 24 * GIB, 1)  # a tick old: shared
    clock.now += 0.01
    taken_at, gpus = probe.recent_snapshot()
    assert (taken_at, gpus[0].memory_free, fake.snapshots) == (101.01, GIB, 2)  # older than that: read again
    assert probe.snapshot()[0].memory_free == GIB and fake.snapshots == 3  # the scheduler always reads afresh


def test_the_first_recent_snapshot_reads_and_the_topology_is_kept_the_same_way():
    fake, clock = CountingProbe("2x24GiB@nvlink"), Clock()
    probe = RecentProbe(fake, max_age_s=1.0, clock=clock)
    assert probe.recent_snapshot()[1] == fake.snapshot()[:] and fake.snapshots == 2
    assert probe.recent_topology() == fake.topology()
    assert probe.description == "fake: 2x24GiB@nvlink"
    mine = probe.recent_snapshot()[1]
    mine.clear()  # a caller's list is its own
    assert len(probe.recent_snapshot()[1]) == 2


def test_threads_that_find_it_too_old_at_once_share_one_read():
    reads = []

    class SlowProbe(FakeProbe):
        def snapshot(self):  # type: ignore[no-untyped-def]
            reads.append(threading.get_ident())
            time.sleep(0.05)
            return super().snapshot()

    probe = RecentProbe(SlowProbe("1x24GiB"), max_age_s=60.0)
    threads = [threading.Thread(target=probe.recent_snapshot) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reads) == 1
