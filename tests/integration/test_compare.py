"""GET /compare against the real database: superseded records do not count, and through a real daemon."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from scheduler.attempts import begin_attempt
from scheduler.policy.placement import Placement
from scheduler.policy.states import JobState
from server.db.models import Job, MetricRecord
from server.db.store import SqlStore
from server.services.compare import compare_jobs
from server.services.errors import NotFound
from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import standin_daemon


def test_the_final_loss_is_the_last_record_no_later_attempt_superseded(store: SqlStore, tmp_path):
    with Session(store.engine) as session:
        job = Job(name="resumed", state=JobState.QUEUED.value, gpus=1, spec={})
        session.add(job)
        session.commit()
        job_id = job.id
    assert job_id is not None
    started = begin_attempt(store, Placement(job_id, ("GPU-0",), "0", None), tmp_path / "runs")
    assert started is not None
    with Session(store.engine) as session:
        for step, loss, superseded in ((5, 2.0, False), (10, 1.0, True)):
            record = {"kind": "metric", "current_steps": step, "total_steps": 20, "loss": loss}
            session.add(
                MetricRecord(
                    job_id=job_id,
                    attempt_id=started.attempt_id,
                    kind="metric",
                    step=step,
                    data=record,
                    superseded=superseded,
                )
            )
        session.commit()
    with Session(store.engine) as session:
        (row,) = compare_jobs(session, [job_id]).data
        assert (row.final_loss, row.steps, row.attempts) == (2.0, 5, 1)
    with Session(store.engine) as session:
        with pytest.raises(NotFound, match=f"job {job_id + 1} does not exist"):
            compare_jobs(session, [job_id, job_id + 1])


def test_compare_through_the_daemon(tmp_path):
    with standin_daemon(tmp_path / "ftq", fake_gpus="2x24GiB", cpu_slots="1") as daemon:
        gpu = daemon.submit(tiny_spec(name="on-gpu", max_steps=5))
        cpu = daemon.submit(tiny_spec(name="on-cpu", gpus=0, max_steps=3))
        wait_for(lambda: daemon.ended(gpu["id"]) and daemon.ended(cpu["id"]), what="both jobs to end")
        response = daemon.http.get("/compare", params={"ids": [cpu["id"], gpu["id"]]})
        assert response.status_code == 200, response.text
        first, second = response.json()["data"]
        assert (first["name"], second["name"]) == ("on-cpu", "on-gpu")
        assert (first["steps"], first["total_steps"], first["final_loss"]) == (3, 3, 1 / 3)
        assert (second["steps"], second["final_loss"], second["attempts"]) == (5, 0.2, 1)
        assert first["gpu_hours"] == 0.0 and second["gpu_hours"] > 0
        assert second["wall_time_s"] > 0
        assert second["result"] == daemon.job(gpu["id"])["result"]

        missing = daemon.http.get("/compare", params={"ids": [gpu["id"], 999]})
        assert missing.status_code == 404 and "job 999 does not exist" in missing.json()["detail"]
        for params in ({}, {"ids": list(range(1, 102))}, {"ids": [0]}):
            bad = daemon.http.get("/compare", params=params)
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"].startswith("ids"), bad.text
