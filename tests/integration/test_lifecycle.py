"""A job lifecycle that loses nothing: OOM, automatic retry, requeue with resume, a killed worker.

A CUDA OOM cannot happen on a machine without a GPU, so the worker honours FTQ_FAULT
(set only by tests): `oom@step:N@batch>B` raises the real torch.OutOfMemoryError at
step N when the micro-batch is above B.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon, process_group_alive

pytestmark = pytest.mark.integration


def faulty_daemon(tmp_path, fault: str) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "ftq", fake_gpus="2x24GiB", fault=fault).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def oom_above_batch_2(tmp_path) -> Iterator[Daemon]:
    yield from faulty_daemon(tmp_path, "oom@step:5@batch>2")


@pytest.fixture
def always_oom(tmp_path) -> Iterator[Daemon]:
    yield from faulty_daemon(tmp_path, "oom@step:2")


def steps_of(daemon: Daemon, job_id: int, **params) -> Counter:
    return Counter(r["current_steps"] for r in daemon.metrics(job_id, kind="metric", **params))


def test_oom_is_retried_with_the_same_effective_batch_and_resumes(oom_above_batch_2: Daemon):
    d = oom_above_batch_2
    spec = tiny_spec(
        per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=12, save_steps=3, logging_steps=1
    )
    job_id = d.submit(spec)["id"]
    job = wait_for(lambda: d.ended(job_id), timeout=300, interval=0.5, what="the job to end")

    assert job["state"] == "succeeded", job
    first, second = job["attempts"]
    assert first["state"] == "oom" and "out of memory" in first["reason"].lower()
    assert first["settings"]["per_device_train_batch_size"] == 4
    halved = second["settings"]
    assert (halved["per_device_train_batch_size"], halved["gradient_accumulation_steps"]) == (2, 2)
    assert second["resumed_from_step"] == 3
    oom_end = [r for r in d.metrics(job_id, kind="end", superseded=True) if r["status"] == "oom"]
    assert oom_end and oom_end[0]["current_steps"] == 4
    # Steps 1-12 once each: attempt 1's step 4 was trained again from checkpoint 3 and is superseded.
    assert steps_of(d, job_id) == Counter(range(1, 13))
    assert steps_of(d, job_id, superseded=True)[4] == 2
    assert job["spec"]["per_device_train_batch_size"] == 2


def test_oom_gives_up_saying_what_was_tried(always_oom: Daemon):
    d = always_oom
    job_id = d.submit(tiny_spec(per_device_train_batch_size=2, max_steps=10, save_steps=100))["id"]
    job = wait_for(lambda: d.ended(job_id), timeout=300, interval=0.5, what="the job to give up")
    assert job["state"] == "oom"
    settings = [
        (a["settings"]["per_device_train_batch_size"], a["settings"]["gradient_checkpointing"]) for a in job["attempts"]
    ]
    assert settings == [(2, False), (1, False), (1, True)]
    assert "nothing smaller to try" in job["reason"] and "micro-batch 2 x accumulation 1" in job["reason"]
    assert d.http.get("/gpus").json()["gpus"][0]["bound_job"] is None


def test_cancel_checkpoints_and_requeue_resumes_where_it_left_off(daemon: Daemon):
    job_id = daemon.submit(tiny_spec(max_steps=40, save_steps=1000, logging_steps=1))["id"]
    wait_for(lambda: max(steps_of(daemon, job_id), default=0) >= 6, timeout=120, what="six steps")
    assert daemon.http.post(f"/jobs/{job_id}/requeue").status_code == 409  # running: nothing to requeue
    daemon.http.post(f"/jobs/{job_id}/cancel")
    job = wait_for(lambda: daemon.ended(job_id), timeout=60, what="the cancel")
    assert job["state"] == "cancelled"
    saved = daemon.metrics(job_id, kind="checkpoint")
    assert saved, "a graceful cancel saves a checkpoint at the step boundary"
    stopped_at = saved[-1]["current_steps"]

    bad = daemon.http.post(f"/jobs/{job_id}/requeue", json={"learning_rate": 1})
    assert bad.status_code == 422 and "learning_rate" in bad.text
    response = daemon.http.post(
        f"/jobs/{job_id}/requeue", json={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
    )
    assert response.status_code == 200 and response.json()["state"] == "queued"
    job = wait_for(lambda: daemon.ended(job_id), timeout=300, interval=0.5, what="the requeued job to end")
    assert job["state"] == "succeeded" and len(job["attempts"]) == 2
    assert job["attempts"][1]["resumed_from_step"] == stopped_at
    assert steps_of(daemon, job_id) == Counter(range(1, 41))
    assert daemon.http.post(f"/jobs/{job_id}/requeue").status_code == 409  # succeeded is final


def test_a_worker_killed_with_sigkill_says_so(daemon: Daemon):
    job_id = daemon.submit(tiny_spec(max_steps=100_000))["id"]
    wait_for(lambda: daemon.metrics(job_id, kind="metric"), timeout=120, what="the job to train")
    pid = daemon.job(job_id)["attempts"][0]["pid"]
    os.killpg(pid, signal.SIGKILL)
    job = wait_for(lambda: daemon.ended(job_id), timeout=60, what="the daemon to notice")
    assert job["state"] == "failed"
    assert job["reason"].startswith("the worker was killed by signal 9 (SIGKILL) — likely the host ran out of memory")
    assert not process_group_alive(pid)
