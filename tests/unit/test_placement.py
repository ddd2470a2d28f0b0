"""Placement over plain data: each test states a situation in a few lines."""

from __future__ import annotations

from scheduler.gpus.fake import FakeProbe
from scheduler.policy.placement import Placement, QueuedJob, place, plan
from scheduler.policy.wait_reasons import explain_wait


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


GIB = 1 << 30


def test_a_foreign_process_filling_a_gpu_sends_the_job_elsewhere():
    probe = FakeProbe("2x24GiB")
    probe.set(0, memory_free=2 * GIB)  # someone else's notebook holds 22 GiB of GPU 0
    placed = place([QueuedJob(1, 0, 1, gpus=1, need_bytes=10 * GIB)], probe.snapshot(), set(), 0, margin_bytes=GIB)
    assert [p.cuda_visible_devices for p in placed] == ["1"]


def test_the_margin_counts():
    g = gpus("1x24GiB")
    assert place([QueuedJob(1, 0, 1, 1, need_bytes=23 * GIB)], g, set(), 0, margin_bytes=2 * GIB) == []
    assert place([QueuedJob(1, 0, 1, 1, need_bytes=23 * GIB)], g, set(), 0, margin_bytes=GIB) != []


def test_small_jobs_take_the_smallest_gpu_that_fits_so_big_ones_still_can():
    g = gpus("1x80GiB,1x24GiB")
    small, big = QueuedJob(1, 0, 1, 1, need_bytes=10 * GIB), QueuedJob(2, 0, 2, 1, need_bytes=60 * GIB)
    assert {p.job_id: p.cuda_visible_devices for p in place([small, big], g, set(), 0)} == {1: "1", 2: "0"}


def test_head_of_line_reservation_lets_smaller_jobs_backfill_only_outside_it():
    g = gpus("4x24GiB")
    leased = {g[0].uuid, g[1].uuid}
    result = plan([job(1, n=3), job(2, n=1), job(3, n=1)], g, leased, 0)
    assert result.reserved_for == 1 and len(result.reserved) == 3 and g[3].uuid not in result.reserved
    assert [(p.job_id, p.cuda_visible_devices) for p in result.placements] == [(2, "3")]


def test_the_reservation_waits_for_our_gpus_rather_than_holding_idle_ones():
    g = gpus("4x24GiB")
    leased = {g[0].uuid, g[1].uuid, g[2].uuid}
    result = plan([job(1, n=2), job(2, n=1)], g, leased, 0)
    assert g[3].uuid not in result.reserved
    assert [p.job_id for p in result.placements] == [2]


def test_a_gpu_held_by_a_foreign_process_is_never_waited_for():
    probe = FakeProbe("2x24GiB")
    probe.set(1, memory_free=GIB)
    result = plan([QueuedJob(1, 0, 1, 2, need_bytes=10 * GIB), job(2)], probe.snapshot(), set(), 0)
    assert result.reserved_for is None and [p.job_id for p in result.placements] == [2]


def test_a_pinned_job_waits_for_its_gpu_and_others_use_the_rest():
    g = gpus("2x24GiB")
    pinned = QueuedJob(1, 0, 1, gpus=1, gpu_ids=(1,))
    result = plan([pinned, job(2), job(3)], g, leased={g[1].uuid}, cpu_slots=0)
    assert result.reserved_for == 1 and result.reserved == {g[1].uuid}
    assert [(p.job_id, p.cuda_visible_devices) for p in result.placements] == [(2, "0")]
    free = place([pinned], g, set(), 0)
    assert free == [Placement(1, (g[1].uuid,), "1")]


def test_a_multi_gpu_job_prefers_an_nvlink_pair():
    g = gpus("4x80GiB")
    topology = {}
    for a in g:
        for b in g:
            if a.index < b.index:
                linked = {a.index, b.index} in ({0, 1}, {2, 3})
                topology[(a.uuid, b.uuid)] = 0 if linked else 60
    placed = place([job(1, n=2)], g, leased={g[0].uuid}, cpu_slots=0, topology=topology)
    assert placed[0].cuda_visible_devices == "2,3"


def test_identical_waiting_jobs_are_decided_once():
    g = gpus("2x24GiB")
    queue = [job(i, n=4) for i in range(1, 5000)] + [job(5000, n=0)]
    assert place(queue, g, set(), cpu_slots=1) == [Placement(5000, ("cpu-0",), "")]


def test_a_waiting_job_says_why():
    probe = FakeProbe("2x40GiB")
    probe.set(1, memory_free=4 * GIB)
    g = probe.snapshot()
    job_ = QueuedJob(7, 0, 7, gpus=2, need_bytes=35 * GIB)
    text = explain_wait(job_, g, holders={g[0].uuid: 3}, margin_bytes=GIB)
    assert text == "waiting: needs 2 GPUs with 36.0 GiB free; 0 have (GPU 0 is held by job 3; GPU 1 has 4.0 GiB free)"
    one = explain_wait(job_, g, holders={}, margin_bytes=GIB)
    assert one.startswith("waiting: needs 2 GPUs with 36.0 GiB free; 1 has")
    pinned = explain_wait(QueuedJob(8, 0, 8, gpus=2, gpu_ids=(0, 5)), g, holders={g[0].uuid: 3})
    assert pinned == "waiting: pinned to GPU 0,5; GPU 0 is held by job 3; GPU 5 does not exist"


def test_a_placement_says_the_room_its_least_free_gpu_offers_beyond_the_margin():
    probe = FakeProbe("2x80GiB")
    probe.set(1, memory_free=60 * GIB)  # a foreign process holds 20 GiB of GPU 1
    placed = place([job(1, n=2), job(2, n=0)], probe.snapshot(), set(), cpu_slots=1, margin_bytes=GIB)
    by_job = {p.job_id: p for p in placed}
    assert by_job[1].cuda_visible_devices == "0,1" and by_job[1].room_bytes == 59 * GIB
    assert by_job[2].room_bytes is None  # a CPU slot has no GPU memory to offer
    unknown = FakeProbe("1x24GiB")
    unknown.set(0, memory_free=None)
    assert place([job(3)], unknown.snapshot(), set(), 0)[0].room_bytes is None  # no need, so it is placed anyway
