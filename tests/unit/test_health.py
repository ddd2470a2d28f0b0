"""What /healthz says, and when a quiet worker is shown stalled: pure functions over what the loop saw."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from scheduler.contract import Health
from server.services.health import health_problems
from server.services.stall import stalled_for_s


def test_a_healthy_daemon_has_no_problems():
    assert health_problems(Health(started_at=0.0, last_tick_at=99.0), now=100.0, tick_s=1.0) == []


def test_a_database_that_cannot_be_written_is_a_problem():
    (problem,) = health_problems(Health(0.0, 99.0, database_error="OperationalError: disk full"), 100.0, 1.0)
    assert "cannot be written" in problem and "disk full" in problem


def test_a_loop_that_stopped_stepping_is_a_problem():
    (problem,) = health_problems(Health(started_at=0.0, last_tick_at=10.0), now=100.0, tick_s=1.0)
    assert "has not completed a step for 90 s" in problem
    assert health_problems(Health(started_at=0.0, last_tick_at=None), now=100.0, tick_s=1.0)
    assert not health_problems(Health(started_at=95.0, last_tick_at=None), now=100.0, tick_s=1.0)


def test_a_data_dir_disk_with_no_room_is_a_problem():
    (problem,) = health_problems(Health(0.0, 99.0, disk_free_bytes=1 << 20, disk_total_bytes=1 << 40), 100.0, 1.0)
    assert "1.0 MiB free (at least 64.0 MiB" in problem
    assert health_problems(Health(0.0, 99.0, disk_free_bytes=10 << 30, disk_total_bytes=1 << 40), 100.0, 1.0) == []
    # A small disk (a 4 MiB tmpfs) is judged by its share: 5% of it must be free.
    assert health_problems(Health(0.0, 99.0, disk_free_bytes=3 << 20, disk_total_bytes=4 << 20), 100.0, 1.0) == []
    assert health_problems(Health(0.0, 99.0, disk_free_bytes=0, disk_total_bytes=4 << 20), 100.0, 1.0)


def test_a_failing_gpu_probe_is_a_problem():
    (problem,) = health_problems(Health(0.0, 99.0, probe_error="NVMLError: GPU is lost"), 100.0, 1.0)
    assert "GPU probe" in problem and "GPU is lost" in problem


def test_a_worker_is_stalled_after_several_of_its_usual_intervals():
    now = datetime(2026, 12, 2, tzinfo=timezone.utc)
    quiet = now - timedelta(seconds=100)
    assert stalled_for_s(now, quiet, interval_s=10, factor=5, min_s=60) == 100.0
    assert stalled_for_s(now, quiet, interval_s=30, factor=5, min_s=60) is None  # 150 s is its rhythm
    assert stalled_for_s(now, now - timedelta(seconds=50), interval_s=1, factor=5, min_s=60) is None  # the floor
    assert stalled_for_s(now, None, interval_s=None, factor=5, min_s=60) is None
    # Without a rhythm yet (loading a model), only after ten times the floor.
    assert stalled_for_s(now, quiet, interval_s=None, factor=5, min_s=60) is None
    assert stalled_for_s(now, now - timedelta(seconds=601), interval_s=None, factor=5, min_s=60) == 601.0
