"""A real daemon that nothing stops: not a spec, not what a worker reports, not a second daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration import daemon as daemons
from tests.integration.daemon import Daemon

pytestmark = pytest.mark.integration


@pytest.fixture
def standin_daemon(tmp_path: Path):
    """A daemon whose workers are the stand-in (tests/integration/standin_worker.py), on fake GPUs."""
    with daemons.standin_daemon(tmp_path / "ftq", fake_gpus="2x24GiB", cpu_slots="1") as d:
        yield d


def test_numbers_beyond_their_columns_are_refused_at_submit(tmp_path: Path):
    d = Daemon(tmp_path / "ftq", fake_gpus="1x24GiB").start()
    try:
        response = d.http.post("/jobs", json=tiny_spec(max_steps=9223372036854775808, seed=2**64))
        assert response.status_code == 422, response.text
        fields = {e["field"] for e in response.json()["errors"]}
        assert fields == {"max_steps", "seed"}
        assert "2147483647" in response.text and "4294967295" in response.text
        infinite = d.http.post(
            "/jobs", content=b'{"model_name_or_path": "m", "dataset": "d", "val_size": Infinity}',
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert infinite.status_code == 422 and "val_size" in infinite.text
    finally:
        d.close()


def test_what_a_worker_reports_never_stops_the_daemon(standin_daemon: Daemon):
    d = standin_daemon
    garbage = d.submit(tiny_spec(name="garbage-1", max_steps=20))["id"]
    fine = d.submit(tiny_spec(name="fine", max_steps=20))["id"]
    job = wait_for(lambda: d.ended(garbage), timeout=60, what="the garbage job")
    assert job["state"] == "succeeded", job
    assert wait_for(lambda: d.ended(fine), timeout=60, what="the fine job")["state"] == "succeeded"
    records = d.metrics(garbage)
    invalid = [r for r in records if r["kind"] == "invalid"]
    reasons = " | ".join(r["reason"] for r in invalid)
    assert "total_steps" in reasons and "not valid JSON" in reasons and "unknown record kind" in reasons, reasons
    losses = [r for r in records if r["kind"] == "metric"]
    assert losses and all(r["loss"] is None and r["nonfinite"] == ["loss"] for r in losses)
    # The scheduler still schedules and cancels; a restart on this data dir recovers.
    long = d.submit(tiny_spec(name="long", max_steps=100_000))["id"]
    wait_for(lambda: d.job(long)["state"] == "running", timeout=60, what="the long job to run")
    assert d.http.post(f"/jobs/{long}/cancel").status_code == 200
    assert wait_for(lambda: d.ended(long), timeout=60, what="the cancel")["state"] == "cancelled"
    d.stop()
    d.start()
    assert d.job(garbage)["state"] == "succeeded" and d.http.get("/healthz").status_code == 200


def test_a_second_daemon_on_the_same_data_dir_exits_naming_the_first(standin_daemon: Daemon):
    d = standin_daemon
    job_id = d.submit(tiny_spec(name="counted", max_steps=60, logging_steps=1))["id"]
    wait_for(lambda: d.metrics(job_id, kind="metric"), timeout=60, what="the job to report")
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", "0"],
        cwd=REPO,
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0 and time.monotonic() - started < 30
    assert d.proc is not None and f"pid {d.proc.pid}" in second.stderr, second.stderr
    assert wait_for(lambda: d.ended(job_id), timeout=60, what="the job")["state"] == "succeeded"
    steps = Counter(r["current_steps"] for r in d.metrics(job_id, kind="metric"))
    assert set(steps.values()) == {1} and len(steps) == 60, "every step stored once: nobody else adopted it"


def test_a_worker_stopped_with_sigstop_shows_stalled_not_running_as_usual(tmp_path: Path):
    d = Daemon(tmp_path / "ftq", fake_gpus="1x24GiB", worker_module="tests.integration.standin_worker", stall_min_s="2")
    d.env["PYTHONPATH"] = str(REPO)
    d.start()
    try:
        job_id = d.submit(tiny_spec(name="quiet", max_steps=100_000))["id"]
        wait_for(lambda: len(d.metrics(job_id, kind="metric")) > 20, timeout=60, what="the job to report")
        assert d.job(job_id)["stalled_for_s"] is None
        pid = d.job(job_id)["attempts"][0]["pid"]
        os.kill(pid, signal.SIGSTOP)  # before, the job read "running" with no hint, for as long as it stayed so
        try:
            job = wait_for(lambda: (j := d.job(job_id))["stalled_for_s"] and j, timeout=30, what="the stall to show")
            assert job["state"] == "running" and job["stalled_for_s"] > 2
            listed = d.http.get("/jobs").json()["data"]
            assert [j["stalled_for_s"] for j in listed if j["id"] == job_id][0] > 2
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: d.job(job_id)["stalled_for_s"] is None, timeout=30, what="the stall to clear")
        assert d.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        assert wait_for(lambda: d.ended(job_id), timeout=60, what="the cancel")["state"] == "cancelled"
    finally:
        d.close()
