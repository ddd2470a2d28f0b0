"""A daemon killed with -9 while jobs train: at start it re-adopts them and loses nothing."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon, process_group_alive

pytestmark = pytest.mark.integration


def test_kill_9_the_daemon_while_jobs_train(daemon: Daemon):
    short = daemon.submit(tiny_spec(name="short", gpus=0, max_steps=6))["id"]
    # Long enough that the trainers outlive the short job by far, however slow the machine (two CPU cores
    # shared by three workers): the check below that they trained on while no daemon watched needs it.
    trainers = [daemon.submit(tiny_spec(name=f"train-{i}", max_steps=150))["id"] for i in range(2)]
    for job_id in trainers:
        wait_for(lambda j=job_id: daemon.metrics(j, kind="metric"), timeout=120, what=f"job {job_id} to train")
    pids = {i: daemon.job(i)["attempts"][0]["pid"] for i in (short, *trainers)}

    daemon.stop(signal.SIGKILL)
    # The short job's worker finishes while no daemon watches; the others train on.
    wait_for(lambda: not process_group_alive(pids[short]), timeout=120, what="the short worker to end")
    assert all(process_group_alive(pids[i]) for i in trainers)

    daemon.start()
    done = daemon.job(short)
    assert done["state"] == "succeeded", done
    for job_id in trainers:
        job = wait_for(lambda j=job_id: daemon.ended(j), timeout=300, interval=0.5, what=f"job {job_id} to end")
        assert job["state"] == "succeeded", job
        assert len(job["attempts"]) == 1 and job["attempts"][0]["adopted"], job["attempts"]
        assert not process_group_alive(pids[job_id])
        # Every step's record exactly once, whether read before the kill or after the restart.
        steps = Counter(r["current_steps"] for r in daemon.metrics(job_id, kind="metric"))
        assert sorted(steps) == list(range(2, 151, 2)) and set(steps.values()) == {1}, steps
        kinds = [r["kind"] for r in daemon.metrics(job_id)]
        assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("end") == 1
    assert [g["bound_job"] for g in daemon.http.get("/gpus").json()["gpus"]] == [None, None]


def test_an_adopted_worker_can_be_cancelled(daemon: Daemon):
    job_id = daemon.submit(tiny_spec(name="long", max_steps=100_000))["id"]
    wait_for(lambda: daemon.metrics(job_id, kind="metric"), timeout=120, what="the job to train")
    pid = daemon.job(job_id)["attempts"][0]["pid"]
    daemon.stop(signal.SIGKILL)
    daemon.start()
    assert daemon.job(job_id)["state"] == "running"
    assert daemon.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = wait_for(lambda: daemon.ended(job_id), timeout=60, what="the cancel")
    assert job["state"] == "cancelled" and not process_group_alive(pid)
    assert daemon.http.get("/gpus").json()["gpus"][0]["bound_job"] is None
