"""Nothing one job holds stops the others: the store and the scheduling loop on a real SQLite database,
with real worker processes (a stand-in that reports what it is told to), no HTTP."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from scheduler.attempts import begin_attempt, finish_attempt
from scheduler.gpus.fake import FakeProbe
from scheduler.loop import Scheduler
from scheduler.policy.exits import Outcome
from scheduler.policy.placement import Placement
from scheduler.policy.states import JobState
from server.db.engine import make_engine, upgrade_database
from server.db.models import Attempt, Job, Lease, MetricRecord
from server.db.store import SqlStore
from server.db.transitions import transition
from server.services import jobs
from server.settings import Settings
from tests.helpers import REPO, tiny_spec, wait_for
from worker.spec.job import JobSpec

pytestmark = pytest.mark.integration


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> str:
    """The stand-in worker module, importable by the workers the scheduler spawns."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return "tests.integration.standin_worker"


def submit(store: SqlStore, **overrides: Any) -> int:
    spec = JobSpec.model_validate(tiny_spec(model_name_or_path=str(REPO / "configs/models/tiny-chat"), **overrides))
    with Session(store.engine) as session:
        job = Job(name=spec.name, state="queued", gpus=spec.gpus, spec=spec.model_dump(mode="json", exclude_none=True))
        session.add(job)
        session.commit()
        assert job.id is not None
        return job.id


def job_row(store: SqlStore, job_id: int) -> Job:
    with Session(store.engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def attempts(store: SqlStore, job_id: int) -> list[Attempt]:
    with Session(store.engine) as session:
        return list(session.exec(select(Attempt).where(Attempt.job_id == job_id)).all())


def scheduler(store: SqlStore, tmp_path: Path, module: str, **kwargs: Any) -> Scheduler:
    return Scheduler(
        store, FakeProbe("2x24GiB"), tmp_path / "runs", cpu_slots=1, cancel_grace_s=2, worker_module=module, **kwargs
    )


def test_a_cancel_that_read_queued_cannot_cancel_a_job_that_started_meanwhile(store: SqlStore, tmp_path: Path):
    job_id = submit(store)
    started = begin_attempt(store, Placement(job_id, ("GPU-0",), "0"), tmp_path / "runs")  # the scheduler wins
    assert started is not None
    with Session(store.engine) as session:
        assert transition(session, job_id, JobState.CANCELLING, JobState.STARTING)  # a second cancel
        session.commit()
    with Session(store.engine) as session:
        # The first cancel's compare-and-set, on the state it read. Before, {queued, cancelling} were its sources,
        # and the job went to cancelled with its attempt alive and its GPU leased; a requeue then ran it twice.
        assert not transition(session, job_id, JobState.CANCELLED, JobState.QUEUED, reason="stale")
        session.commit()
    assert job_row(store, job_id).state == "cancelling"
    with Session(store.engine) as session:
        assert [lease.job_id for lease in session.exec(select(Lease)).all()] == [job_id]


def test_a_transition_outside_the_table_is_a_bug_not_a_silent_no(store: SqlStore):
    job_id = submit(store)
    with Session(store.engine) as session, pytest.raises(ValueError, match="not a transition"):
        transition(session, job_id, JobState.CANCELLED, JobState.RUNNING)


def test_an_end_learnt_before_the_start_record_still_ends_the_job(store: SqlStore, tmp_path: Path):
    job_id = submit(store)
    started = begin_attempt(store, Placement(job_id, ("GPU-0",), "0"), tmp_path / "runs")
    assert started is not None
    finish_attempt(store, started.attempt_id, Outcome(JobState.SUCCEEDED, "succeeded"), 0, "")
    job = job_row(store, job_id)
    assert job.state == "succeeded", "before, the job stayed starting for good with its attempt ended"
    (attempt,) = attempts(store, job_id)
    assert attempt.ended_at is not None


def test_records_no_column_can_hold_are_kept_raw_and_the_job_still_reads(store: SqlStore, tmp_path: Path):
    job_id = submit(store)
    started = begin_attempt(store, Placement(job_id, ("GPU-0",), "0"), tmp_path / "runs")
    assert started is not None
    records = [
        {"kind": "start", "current_steps": 0, "total_steps": 9223372036854775808},
        {"kind": "metric", "current_steps": 5, "total_steps": 20, "loss": float("nan")},
        {"kind": "metric", "current_steps": 2**64, "loss": 1.0},
    ]
    store.add_records(started.attempt_id, records, 100)  # before: OverflowError, on every tick, for good
    with Session(store.engine) as session:
        rows = session.exec(select(MetricRecord).order_by(MetricRecord.id)).all()
        assert [r.kind for r in rows] == ["invalid", "metric", "invalid"]
        assert rows[1].data["loss"] is None and rows[1].data["nonfinite"] == ["loss"]
        job = session.get(Job, job_id)
        assert job is not None
        public = jobs.describe(session, job)
    body = json.loads(public.model_dump_json())
    assert body["progress"] == {"current_steps": 5, "total_steps": 20, "percentage": 25.0}
    (attempt,) = attempts(store, job_id)
    assert attempt.metrics_offset == 100


def test_recovery_fails_the_job_whose_row_is_broken_and_starts_anyway(store: SqlStore, tmp_path: Path, standin):
    broken, queued_bad, fine = submit(store, name="broken"), submit(store, name="bad-ids"), submit(store, name="fine")
    started = begin_attempt(store, Placement(broken, ("GPU-0",), "0"), tmp_path / "runs")
    assert started is not None
    db = sqlite3.connect(tmp_path / "ftq.db")
    db.execute("UPDATE attempts SET pid = 1, pid_start_time = 'yesterday' WHERE id = ?", (started.attempt_id,))
    db.execute("UPDATE jobs SET gpu_ids = '{not json' WHERE id = ?", (queued_bad,))
    db.commit()
    db.close()

    loop = scheduler(store, tmp_path, standin)
    loop.recover()  # before, one bad row raised here and the daemon refused to start
    job = job_row(store, broken)
    assert job.state == "failed" and "recovery at daemon start failed" in (job.reason or ""), job.reason
    loop.step()
    db = sqlite3.connect(tmp_path / "ftq.db")  # the row cannot be loaded as a Job: it is read column by column
    state, reason = db.execute("SELECT state, reason FROM jobs WHERE id = ?", (queued_bad,)).fetchone()
    db.close()
    assert state == "failed" and "cannot read this job's row" in reason
    assert job_row(store, fine).state in ("starting", "running")
    wait_for(lambda: (loop.step(), job_row(store, fine).state == "succeeded")[1], timeout=60, what="the fine job")


class FailingStore(SqlStore):
    """The real store, but storing one attempt's records raises, as a bug of ours would."""

    poisoned: int | None = None

    def _add_records(self, session: Session, attempt_id: int, records: list[dict[str, Any]], offset: int) -> None:
        if attempt_id == self.poisoned:
            raise RuntimeError("a bug in storing this attempt's records")
        super()._add_records(session, attempt_id, records, offset)


def test_an_error_on_one_attempt_fails_that_attempt_never_the_loop(tmp_path: Path, standin):
    engine = make_engine(Settings(data_dir=tmp_path))
    upgrade_database(engine)
    store = FailingStore(engine)
    victim, other = submit(store, name="victim", max_steps=400), submit(store, name="other", max_steps=40)
    loop = scheduler(store, tmp_path, standin)
    loop.step()
    (attempt,) = attempts(store, victim)
    store.poisoned = attempt.id
    pid = loop.live_pids()[attempt.id]
    wait_for(lambda: (loop.step(), job_row(store, other).state == "succeeded")[1], timeout=60, what="the other job")
    job = job_row(store, victim)
    assert job.state == "failed" and "could not store its records: RuntimeError" in (job.reason or ""), job.reason
    assert attempt.id not in loop.live_pids()
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
             timeout=10, what="the victim's worker to be stopped")  # fmt: skip
