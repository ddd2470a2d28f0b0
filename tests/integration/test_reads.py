"""The polled reads on a real SQLite database (migrated by Alembic), without a daemon.

The batched page of GET /jobs says what the per-job path says of each job; the reads of one
request see one moment; the pool follows the settings; the schema the migrations make is the
one the models declare; a kept answer is never older than the last commit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, SQLModel, col

from scheduler.attempts import begin_attempt, finish_attempt
from scheduler.gpus.cache import RecentProbe
from scheduler.gpus.fake import FakeProbe
from scheduler.policy.exits import Outcome
from scheduler.policy.placement import Placement
from scheduler.policy.states import JobState
from server.api.read_cache import DatabaseVersion
from server.app import create_app
from server.db.engine import make_engine, pool_size, read_snapshot
from server.db.models import Job, JobSummary
from server.db.store import SqlStore
from server.services import jobs
from server.services.machine import LazyMachine, Machine
from server.settings import Settings
from tests.helpers import REPO, tiny_spec
from worker.spec.units import GIB

pytestmark = pytest.mark.integration


def add_job(store: SqlStore, name: str, **values) -> int:  # type: ignore[no-untyped-def]
    with Session(store.engine) as session:
        fields = {"state": JobState.QUEUED.value, "gpus": 1, "spec": tiny_spec(name=name), "need_bytes": GIB, **values}
        job = Job(name=name, **fields)
        session.add(job)
        session.commit()
        assert job.id is not None
        return job.id


def run(store: SqlStore, job_id: int, gpu: str, records: list[dict]) -> int:  # type: ignore[type-arg]
    started = begin_attempt(store, Placement(job_id, (gpu,), "0"), Path("/nonexistent/runs"))
    assert started is not None
    store.add_records(started.attempt_id, [{"kind": "start", "current_steps": 0}, *records], 100)
    return started.attempt_id


def machine_of(store: SqlStore, session: Session) -> LazyMachine:
    probe = RecentProbe(FakeProbe("2x24GiB"), max_age_s=1.0)
    return LazyMachine(lambda: (Machine(probe.snapshot(), jobs.leases_by_resource(session), 1, GIB), None))


def test_the_page_says_of_each_job_what_the_per_job_path_says(store: SqlStore):
    gpu0, gpu1 = (g.uuid for g in FakeProbe("2x24GiB").snapshot())
    running = add_job(store, "running")
    run(
        store,
        running,
        gpu0,
        [{"kind": "metric", "current_steps": s, "total_steps": 40, "loss": 3 - s / 10} for s in (2, 4)],
    )
    evaluated = add_job(store, "evaluated")
    attempt = run(
        store, evaluated, gpu1, [{"kind": "metric", "current_steps": 2, "loss": 2}, {"kind": "eval", "eval_loss": 1.5}]
    )
    finish_attempt(store, attempt, Outcome(JobState.FAILED, "training failed: boom"), 1, "boom")
    add_job(store, "queued")  # waits: GPU 0 is held
    add_job(store, "queued too")  # the same shape: the same reason, however the page finds it
    add_job(store, "pinned", gpu_ids=[1])  # GPU 1 is the second attempt's, below
    add_job(store, "cpu", gpus=0)
    with Session(store.engine) as session:  # a second attempt without a metric yet: the first one's loss shows
        session.execute(update(Job).where(col(Job.id) == evaluated).values(state=JobState.QUEUED.value))
        session.commit()
    run(store, evaluated, gpu1, [])

    with Session(store.engine) as session:
        page = jobs.list_jobs(session, None, 0, 100, machine_of(store, session))
    expected = []
    for job_id in range(1, 7):
        with Session(store.engine) as session:
            whole = jobs.describe_job(session, job_id, machine_of(store, session))
        expected.append(JobSummary.model_validate(whole.model_dump()))
    assert page.count == 6 and page.data == expected
    by_name = {s.name: s for s in page.data}
    assert by_name["running"].loss == pytest.approx(2.6) and by_name["running"].progress.current_steps == 4
    assert by_name["evaluated"].loss == 2.0 and by_name["evaluated"].bound_resources == [gpu1]
    assert by_name["queued"].waiting and "held by job 1" in by_name["queued"].waiting
    assert by_name["pinned"].waiting and by_name["pinned"].waiting.endswith("GPU 1 is held by job 2")
    assert page.model_dump_json().count('Z"') >= 6  # every submitted_at, at least, in UTC with a Z
    assert by_name["cpu"].waiting == "waiting for a CPU slot; 0 of 1 in use"
    with Session(store.engine) as session:
        whole = jobs.describe_job(session, evaluated)
    assert whole.latest_metrics == {"kind": "eval", "eval_loss": 1.5} and len(whole.attempts) == 2
    with Session(store.engine) as session:
        queued = jobs.list_jobs(session, JobState.QUEUED, 0, 2, None)
    assert queued.count == 4 and [s.name for s in queued.data] == ["queued", "queued too"]
    assert all(s.waiting is None for s in queued.data)  # no machine, no wait reasons


def test_the_reads_of_a_snapshot_session_see_one_moment(store: SqlStore):
    job_id = add_job(store, "a")

    def reason(session: Session) -> str | None:
        return session.connection().exec_driver_sql("SELECT reason FROM jobs WHERE id = ?", (job_id,)).scalar_one()

    def write(value: str) -> None:
        with Session(store.engine) as writer:
            writer.execute(update(Job).where(col(Job.id) == job_id).values(reason=value))
            writer.commit()

    for snapshot in (True, False):
        write("before")
        with Session(store.engine) as reader:
            if snapshot:
                read_snapshot(reader)
            assert reason(reader) == "before"
            write("after")  # committed between two reads of one request
            assert reason(reader) == ("before" if snapshot else "after")
    with Session(store.engine) as reader, pytest.raises(RuntimeError):
        reason(reader)
        read_snapshot(reader)  # too late: the first query has begun the transaction


def test_the_pool_keeps_a_connection_for_each_api_thread_and_the_scheduler(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, api_threads=7)
    engine = make_engine(settings)
    assert pool_size(settings) == 9 and engine.pool.size() == 9  # type: ignore[attr-defined]


def test_the_migrated_schema_is_the_one_the_models_declare(store: SqlStore):
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []
        indexes = connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE tbl_name = 'metrics'").scalars()
        assert "ix_metrics_job_id_kind_id" in set(indexes)


def test_the_database_version_changes_when_any_connection_commits(tmp_path: Path):
    path = str(tmp_path / "v.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    version = DatabaseVersion(path)
    writer = sqlite3.connect(path)
    before = version()
    writer.execute("INSERT INTO t VALUES (1)")
    assert version() == before  # not committed yet
    writer.rollback()
    assert version() == before
    writer.execute("INSERT INTO t VALUES (2)")
    writer.commit()
    assert version() is not None and version() != before
    version.close()


def test_a_kept_answer_is_never_older_than_the_last_commit(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, fake_gpus="2x24GiB", input_dirs=[str(REPO)], tick_s=60)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        client.app.state.scheduler.stop()  # no worker starts, and nothing but this test writes
        job = client.post("/jobs", json=tiny_spec(gpus=0, max_steps=100_000)).json()
        assert job["state"] == "queued"
        first, again = client.get(f"/jobs/{job['id']}").json(), client.get(f"/jobs/{job['id']}").json()
        assert first == again
        listed = client.get("/jobs").json()
        engine = client.app.state.engine
        with Session(engine) as session:  # a write that is not the API's: the scheduler's, say
            session.execute(update(Job).where(col(Job.id) == job["id"]).values(reason="moved by hand"))
            session.commit()
        assert client.get(f"/jobs/{job['id']}").json()["reason"] == "moved by hand"
        assert client.get("/jobs").json()["data"][0]["reason"] == "moved by hand" != listed["data"][0]["reason"]
        assert client.get("/jobs/12345").status_code == 404
        assert client.get(f"/jobs/{job['id']}").json()["attempts"] == []  # and it never ran
