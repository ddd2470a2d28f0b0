"""Placement over plain data: each test states a situation in a few lines."""

from __future__ import annotations

from scheduler.placement import Placement, QueuedJob, place
from scheduler.probe import FakeProbe


def gpus(spec: str = "4x24GiB"):
    return FakeProbe(spec).snapshot()


def job(job_id: int, n: int = 1, priority: int = 0) -> QueuedJob:
    return QueuedJob(job_id=job_id, priority=priority, seq=job_id, gpus=n)


def test_each_job_gets_gpus_no_other_job_holds():
    placed = place([job(1), job(2), job(3)], gpus("2x24GiB"), leased=set(), cpu_slots=0)
    assert [p.job_id for p in placed] == [1, 2]
    assert placed[0].cuda_visible_devices == "0" and placed[1].cuda_visible_devices == "1"
    assert set(placed[0].resources).isdisjoint(placed[1].resources)


def test_a_leased_gpu_is_never_offered_even_if_it_looks_free():
    g = gpus("2x24GiB")
    placed = place([job(1)], g, leased={g[0].uuid}, cpu_slots=0)
    assert placed == [Placement(1, (g[1].uuid,), "1")]


def test_priority_first_then_submit_order():
    placed = place([job(1), job(2, priority=5), job(3)], gpus("2x24GiB"), set(), 0)
    assert [p.job_id for p in placed] == [2, 1]


def test_a_multi_gpu_job_gets_distinct_gpus_in_pci_order():
    placed = place([job(1, n=3)], gpus("4x24GiB"), set(), 0)
    assert placed[0].cuda_visible_devices == "0,1,2"
    assert len(set(placed[0].resources)) == 3


def test_no_gpu_job_jumps_ahead_of_a_blocked_head():
    g = gpus("2x24GiB")
    placed = place([job(1, n=2), job(2, n=1)], g, leased={g[0].uuid}, cpu_slots=0)
    assert placed == []


def test_an_unhealthy_gpu_is_not_placeable():
    probe = FakeProbe("2x24GiB")
    probe.set(0, healthy=False, error="GPU is lost")
    placed = place([job(1), job(2)], probe.snapshot(), set(), 0)
    assert [p.cuda_visible_devices for p in placed] == ["1"]


def test_cpu_jobs_take_cpu_slots_beside_gpu_jobs():
    placed = place([job(1, n=0), job(2, n=0), job(3, n=1)], gpus("1x24GiB"), leased={"cpu-0"}, cpu_slots=2)
    # cpu-0 is held by a running job: job 1 takes the other slot, job 2 waits.
    assert {p.job_id: p.resources for p in placed} == {1: ("cpu-1",), 3: (gpus("1x24GiB")[0].uuid,)}
    assert [p.cuda_visible_devices for p in placed if p.job_id == 1] == [""]


def test_no_gpus_and_no_slots_places_nothing():
    assert place([job(1), job(2, n=0)], [], set(), 0) == []
