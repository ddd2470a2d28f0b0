"""What ftq alerts on, and when a GPU snapshot is news (server.live.alerts): plain readings in, alerts out."""

from __future__ import annotations

from typing import Any

from server.live.alerts import job_alerts, snapshot_changed, vram_alerts

GIB = 2**30


def gpu(index: int = 0, used: float | None = 1.0, total: float = 10.0, **more: Any) -> dict[str, Any]:
    return {
        "uuid": f"GPU-{index}",
        "index": index,
        "name": "H200",
        "memory_used": None if used is None else int(used * GIB),
        "memory_total": int(total * GIB),
        "utilization": 0,
        "processes": [],
        "healthy": True,
        "bound_job": None,
        **more,
    }


def test_no_ratio_no_memory_alert():
    assert vram_alerts([gpu(used=10)], None, set()) == ([], set())


def test_crossing_the_ratio_alerts_once_and_rearms_only_clearly_below():
    ratio = 0.9
    alerts, alerted = vram_alerts([gpu(used=9.5, bound_job=7)], ratio, set())
    assert [(a.alert, a.gpu, a.job_id) for a in alerts] == [("vram", 0, 7)]
    assert "95%" in alerts[0].message and "held by job 7" in alerts[0].message
    assert vram_alerts([gpu(used=9.9)], ratio, alerted) == ([], alerted)  # still over: no second alert
    assert vram_alerts([gpu(used=8.9)], ratio, alerted) == ([], alerted)  # just under: hovering, not re-armed
    assert vram_alerts([gpu(used=8.0)], ratio, alerted) == ([], set())  # clearly under: re-armed
    again, _ = vram_alerts([gpu(used=9.0)], ratio, set())
    assert len(again) == 1  # the ratio itself counts as crossed


def test_an_unknown_reading_neither_alerts_nor_rearms():
    _, alerted = vram_alerts([gpu(used=9.5)], 0.9, set())
    assert vram_alerts([gpu(used=None)], 0.9, alerted) == ([], alerted)
    assert vram_alerts([gpu(used=None)], 0.9, set()) == ([], set())


def test_each_gpu_on_its_own():
    alerts, alerted = vram_alerts([gpu(0, used=9.5), gpu(1, used=1.0), gpu(2, used=10)], 0.9, set())
    assert [a.gpu for a in alerts] == [0, 2] and alerted == {"GPU-0", "GPU-2"}


def test_a_job_end_alerts_and_an_oom_says_no_retry_is_left():
    done = job_alerts(3, "cs-billing", "succeeded", "succeeded")
    assert [(a.alert, a.job_id, a.state) for a in done] == [("job_ended", 3, "succeeded")]
    assert done[0].message == "job 3 (cs-billing) ended succeeded"
    oom = job_alerts(4, "cs-returns", "oom", "CUDA out of memory; no smaller settings left")
    assert [a.alert for a in oom] == ["job_ended", "oom_retries_exhausted"]
    assert "no smaller settings left" in oom[1].message and "requeue it with smaller settings" in oom[1].message
    assert oom[1].data("2026-12-03T00:00:00.000Z")["state"] == "oom"


def test_a_snapshot_is_news_when_a_holder_a_process_or_a_reading_moves():
    before = [gpu(0, used=1.0), gpu(1, used=2.0)]
    assert snapshot_changed(None, before)
    assert not snapshot_changed(before, [gpu(0, used=1.05), gpu(1, used=2.0)])  # NVML's jitter
    assert snapshot_changed(before, [gpu(0, used=1.5), gpu(1, used=2.0)])
    assert snapshot_changed(before, [gpu(0, used=1.0, bound_job=5), gpu(1, used=2.0)])
    assert snapshot_changed(before, [gpu(0, used=1.0, processes=[{"pid": 9}]), gpu(1, used=2.0)])
    assert snapshot_changed(before, [gpu(0, used=1.0, utilization=50), gpu(1, used=2.0)])
    assert snapshot_changed(before, [gpu(0, used=None), gpu(1, used=2.0)])
    assert snapshot_changed(before, [gpu(0, used=1.0, healthy=False), gpu(1, used=2.0)])
