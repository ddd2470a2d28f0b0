"""GET /compare's computation over plain rows: final losses, speed, memory, wall time, GPU-hours, result."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi.testclient import TestClient

from server.app import create_app
from server.services.compare import JobRows, compare, compare_job, gpu_hours, tokens_per_s
from server.settings import Settings
from worker.spec.records import hms_seconds

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def attempt(start_min: float, end_min: float | None, resources: list[str], **extra) -> dict:
    ended = T0 + timedelta(minutes=end_min) if end_min is not None else None
    return {"started_at": T0 + timedelta(minutes=start_min), "ended_at": ended, "resources": resources, **extra}


def test_a_succeeded_job_on_two_gpus_after_an_oom_retry():
    rows = JobRows(
        id=7,
        name="cs-billing",
        state="succeeded",
        started_at=T0,
        ended_at=T0 + timedelta(minutes=90),
        attempts=[
            attempt(0, 30, ["GPU-a", "GPU-b"], peak_memory_gib=23.5, last_step=40, total_steps=100),
            attempt(30, 90, ["GPU-a", "GPU-b"], peak_memory_gib=18.25, last_step=100, total_steps=100),
        ],
        metric={"kind": "metric", "current_steps": 100, "total_steps": 100, "loss": 0.75, "throughput": 1234.567},
        eval={"kind": "eval", "eval_loss": 0.9},
        end={"kind": "end", "status": "succeeded", "result": "/data/runs/job-7/output", "final_loss": 1.1},
    )
    row = compare_job(rows, now=T0 + timedelta(hours=5))
    assert row.model_dump() == {
        "id": 7,
        "name": "cs-billing",
        "state": "succeeded",
        "final_loss": 0.75,  # the last metric's loss, not the end record's average
        "final_eval_loss": 0.9,
        "steps": 100,
        "total_steps": 100,
        "tokens_per_s": 1234.57,
        "peak_vram_gib": 23.5,  # the larger of the two attempts' peaks
        "wall_time_s": 5400.0,
        "gpu_hours": 3.0,  # 1.5 h x 2 GPUs, both attempts
        "result": "/data/runs/job-7/output",
        "attempts": 2,
    }


def test_a_running_job_counts_until_now_and_has_no_result_yet():
    now = T0 + timedelta(minutes=30)
    rows = JobRows(
        id=2,
        name="live",
        state="running",
        started_at=T0,
        attempts=[attempt(0, None, ["GPU-a"], last_step=12, total_steps=50)],
        end=None,
    )
    row = compare_job(rows, now)
    assert (row.wall_time_s, row.gpu_hours, row.steps, row.total_steps) == (1800.0, 0.5, 12, 50)
    assert row.final_loss is None and row.result is None and row.tokens_per_s is None


def test_a_queued_job_is_all_nulls_and_a_failed_one_names_no_result():
    queued = compare_job(JobRows(id=1, name="q", state="queued"), T0)
    assert queued.attempts == 0 and queued.gpu_hours is None and queued.wall_time_s is None
    assert queued.steps is None and queued.peak_vram_gib is None
    failed = JobRows(id=3, name="f", state="failed", end={"status": "failed", "result": "/somewhere"})
    assert compare_job(failed, T0).result is None


def test_cpu_slots_cost_no_gpu_hours():
    assert gpu_hours([attempt(0, 60, ["cpu-0"])], T0) == 0.0
    assert gpu_hours([attempt(0, 60, ["GPU-a", "GPU-b", "GPU-c"]), attempt(60, 80, ["GPU-a"])], T0) == 3.3333
    assert gpu_hours([], T0) is None


def test_tokens_per_s_falls_back_to_tokens_over_time():
    assert tokens_per_s({"throughput": 10.0}, None) == 10.0
    assert tokens_per_s({"total_tokens": 3000, "elapsed_time": "0:01:00"}, None) == 50.0
    assert tokens_per_s({"loss": 1.0}, {"real_tokens": 7200, "elapsed_time": "1:00:00"}) == 2.0
    assert tokens_per_s({"total_tokens": 3000, "elapsed_time": "0:00:00"}, None) is None
    assert tokens_per_s(None, None) is None


def test_elapsed_times_in_seconds():
    assert hms_seconds("0:00:05") == 5.0
    assert hms_seconds("26:01:02") == 26 * 3600 + 62
    assert hms_seconds("soon") is None and hms_seconds(None) is None and hms_seconds("1:2") is None


def test_the_order_asked_is_kept():
    jobs = [JobRows(id=i, name=str(i), state="queued") for i in (5, 1, 3)]
    assert [row.id for row in compare(jobs, T0).data] == [5, 1, 3]


def test_the_document_says_what_compare_answers():
    document = TestClient(create_app(Settings()), base_url="http://localhost").get("/openapi.json").json()
    operation = document["paths"]["/compare"]["get"]
    assert operation["operationId"] == "compare_jobs"
    assert {"200", "401", "404", "422"} <= set(operation["responses"])
    (ids,) = operation["parameters"]
    assert ids["name"] == "ids" and ids["required"] and ids["schema"]["maxItems"] == 100
    assert ids["schema"]["items"]["minimum"] == 1
    row = document["components"]["schemas"]["CompareRow"]["properties"]
    assert {"final_loss", "final_eval_loss", "tokens_per_s", "peak_vram_gib", "gpu_hours", "result"} <= set(row)
