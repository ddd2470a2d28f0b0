"""The whole path through a real daemon: submit -> place -> train -> stream -> poll, and cancel.

Real uvicorn on a free port, real SQLite + migrations, real worker subprocesses
training the shipped tiny model; only the GPUs are fake (FTQ_FAKE_GPUS=2x24GiB),
so the workers train on the CPU while the daemon places them as on two GPUs.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon, process_group_alive

pytestmark = pytest.mark.integration


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_three_jobs_on_two_gpus(daemon: Daemon):
    ids = [
        daemon.submit(tiny_spec(name=f"cs-{line}", dataset=f"cs_{line}", max_steps=24))["id"]
        for line in ("billing", "shipping", "accounts")
    ]
    jobs = {i: wait_for(lambda i=i: daemon.ended(i), timeout=400, interval=0.5, what=f"job {i} to end") for i in ids}

    for job in jobs.values():
        assert job["state"] == "succeeded", job
        assert job["bound_resources"] == []
        assert len(job["attempts"]) == 1 and job["attempts"][0]["exit_code"] == 0
        assert job["progress"] == {"current_steps": 24, "total_steps": 24, "percentage": 100.0}
        assert job["final_loss"] is not None and job["wall_time_s"] > 0

    records = {i: daemon.metrics(i) for i in ids}
    starts = {i: records[i][0] for i in ids}
    ends = {i: records[i][-1] for i in ids}
    for i in ids:
        assert starts[i]["kind"] == "start" and ends[i]["kind"] == "end" and ends[i]["status"] == "succeeded"
        losses = [r["loss"] for r in records[i] if r["kind"] == "metric"]
        assert len(losses) == 12, losses
        assert losses[-1] < losses[0], f"job {i}: loss did not go down: {losses}"

    # The first two ran at the same time, each on its own GPU, as the workers themselves saw it.
    first, second, third = ids
    assert {starts[first]["cuda_visible_devices"], starts[second]["cuda_visible_devices"]} == {"0", "1"}
    assert ts(starts[first]["timestamp"]) < ts(ends[second]["timestamp"])
    assert ts(starts[second]["timestamp"]) < ts(ends[first]["timestamp"])
    # The third started only once a GPU was free again, on the GPU that freed first.
    first_end = min((jobs[first], jobs[second]), key=lambda j: ts(j["attempts"][0]["ended_at"]))
    assert ts(jobs[third]["attempts"][0]["started_at"]) >= ts(first_end["attempts"][0]["ended_at"])
    assert starts[third]["cuda_visible_devices"] == first_end["cuda_visible_devices"]

    # Metrics are served with ?since=, logs with ?tail=; nothing holds a GPU or a process.
    later = daemon.metrics(first, since=20)
    assert later and all(r["current_steps"] > 20 for r in later)
    log = daemon.http.get(f"/jobs/{first}/logs", params={"tail": 5})
    assert log.status_code == 200 and 0 < len(log.text.splitlines()) <= 5
    assert "saved" in daemon.http.get(f"/jobs/{first}/logs").text
    gpus = daemon.http.get("/gpus").json()
    assert [g["bound_job"] for g in gpus["gpus"]] == [None, None]
    for job in jobs.values():
        assert not process_group_alive(job["attempts"][0]["pid"])
    listed = daemon.http.get("/jobs", params={"state": "succeeded"}).json()
    assert listed["count"] == 3 and [j["id"] for j in listed["data"]] == ids


def test_cancel_queued_and_running_jobs(daemon: Daemon):
    long = tiny_spec(max_steps=100_000, logging_steps=1)
    running = [daemon.submit({**long, "name": f"long-{n}"})["id"] for n in range(2)]
    queued = daemon.submit({**long, "name": "waiting"})["id"]

    # A queued job is cancelled at once; cancelling it again is a conflict.
    wait_for(lambda: all(daemon.job(i)["state"] == "running" for i in running), timeout=120, what="two running")
    assert daemon.job(queued)["state"] == "queued"
    response = daemon.http.post(f"/jobs/{queued}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    again = daemon.http.post(f"/jobs/{queued}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]

    # A running job goes cancelling -> cancelled, and no process of it is left.
    victim = running[0]
    wait_for(lambda: daemon.metrics(victim, kind="metric"), timeout=120, what="a metric record")
    pid = daemon.job(victim)["attempts"][0]["pid"]
    assert process_group_alive(pid)
    response = daemon.http.post(f"/jobs/{victim}/cancel")
    assert response.status_code == 200 and response.json()["state"] in ("cancelling", "cancelled")
    job = wait_for(lambda: daemon.ended(victim), timeout=30, what="the cancel to finish")
    assert job["state"] == "cancelled" and job["attempts"][0]["state"] == "cancelled"
    assert not process_group_alive(pid)
    assert job["bound_resources"] == []
    assert daemon.metrics(victim)[-1]["kind"] == "end"

    # Its GPU went back to the pool: the other job still holds exactly one.
    bound = [g["bound_job"] for g in daemon.http.get("/gpus").json()["gpus"]]
    assert sorted(b for b in bound if b) == [running[1]]
    daemon.http.post(f"/jobs/{running[1]}/cancel")
    wait_for(lambda: daemon.ended(running[1]), timeout=30, what="the second cancel")
