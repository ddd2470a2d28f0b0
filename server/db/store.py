"""The database side of the scheduler: every state change as one transaction.

`SqlStore` implements `scheduler.contract.Store`; each change of a job's state in
it is a compare-and-set (server.db.transitions) in the same transaction as the
attempt and the leases it belongs to.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Text, case, cast, delete, func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, col, select

from scheduler.contract import LiveAttempt, StartedAttempt
from scheduler.executor import WorkerRef
from scheduler.policy.attempt_spec import AttemptSpec, StartFacts
from scheduler.policy.endings import EndFacts, Ending
from scheduler.policy.placement import Placement, QueuedJob, QueueShape
from scheduler.policy.states import JobState
from server.db.attempt_records import add_records
from server.db.models import Attempt, Daemon, Job, Lease, utcnow
from server.db.transitions import transition

log = logging.getLogger("ftq.store")


class SqlStore:
    def __init__(self, engine: Engine, committed: Callable[[], None] | None = None) -> None:
        self.engine = engine
        # Told after a commit of records: the event hub reads them at once instead of at its next look.
        self.committed = committed or (lambda: None)

    def is_unavailable(self, exc: BaseException) -> bool:
        """Whether `exc` says the database cannot be used now (locked, full, unreachable), not that a row is bad."""
        return isinstance(exc, (OperationalError, PoolTimeout, DisconnectionError)) or (
            isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT)
        )

    def queue_shape(self) -> QueueShape:
        """How many queued jobs want GPUs and how many a CPU slot: one count over the state index, not the rows."""
        with Session(self.engine) as session:
            cpu = func.coalesce(func.sum(case((col(Job.gpus) == 0, 1), else_=0)), 0)
            total, cpu_jobs = session.exec(select(func.count(), cpu).where(Job.state == JobState.QUEUED.value)).one()
        return QueueShape(gpu_jobs=int(total) - int(cpu_jobs), cpu_jobs=int(cpu_jobs))

    def queued_jobs(self) -> tuple[list[QueuedJob], list[tuple[int, str]]]:
        """The queue as placement needs it, and the rows that cannot be read (id, why), read apart from the rest."""
        with Session(self.engine) as session:
            # gpu_ids as its raw text: a row holding something that is not JSON is one bad job, not a stop.
            query = select(Job.id, Job.priority, Job.gpus, Job.need_bytes, cast(col(Job.gpu_ids), Text))
            rows = session.exec(query.where(Job.state == JobState.QUEUED.value)).all()
        queue, unreadable = [], []
        for row in rows:
            try:
                queue.append(_queued(*row))
            except (TypeError, ValueError) as exc:
                unreadable.append((int(row[0]), f"{type(exc).__name__}: {exc}"[:500]))
        return queue, unreadable

    def reject_job(self, job_id: int, reason: str) -> None:
        """A queued job the daemon cannot read ends failed (queued -> starting -> failed), saying why."""
        with Session(self.engine) as session:
            if transition(session, job_id, JobState.STARTING, JobState.QUEUED):
                transition(session, job_id, JobState.FAILED, JobState.STARTING, ended_at=utcnow(), reason=reason)
            session.commit()

    def leased_resources(self) -> set[str]:
        with Session(self.engine) as session:
            return set(session.exec(select(Lease.resource)).all())

    def start_facts(self, job_id: int) -> StartFacts | None:
        """What the choice of the job's next attempt spec reads (scheduler.policy.attempt_spec); None: no such job."""
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            earlier = session.exec(
                select(Attempt.settings, Attempt.peak_memory_gib)
                .where(Attempt.job_id == job_id, col(Attempt.peak_memory_gib).is_not(None))
                .order_by(col(Attempt.number).desc())
            ).all()
            return StartFacts(job.spec, list(job.tried), [(settings, peak) for settings, peak in earlier])

    def write_start(
        self, placement: Placement, runs_dir: Path, facts: StartFacts, runs: AttemptSpec
    ) -> StartedAttempt | None:
        """queued -> starting, a new attempt running `runs` and its leases, all or nothing.

        None when the job is no longer queued with the spec and tried settings `runs` was chosen
        from (cancelled or requeued meanwhile), when it has a live attempt, or a lease is taken.
        """
        with Session(self.engine) as session:
            job = session.get(Job, placement.job_id)
            if (
                job is None
                or (job.spec, job.tried) != (facts.spec, facts.tried)
                or not transition(session, placement.job_id, JobState.STARTING, JobState.QUEUED, reason=None)
            ):
                session.rollback()
                return None
            live = session.exec(
                select(func.count()).where(Attempt.job_id == placement.job_id, col(Attempt.ended_at).is_(None))
            ).one()
            if live:  # one job, one live attempt: a queued job with a live attempt is a bug, never a second worker
                session.rollback()
                log.error("job %s is queued but has a live attempt; not starting another", placement.job_id)
                return None
            number = (
                session.exec(select(func.max(Attempt.number)).where(Attempt.job_id == placement.job_id)).one() or 0
            ) + 1
            run_dir = runs_dir / f"job-{placement.job_id}" / f"attempt-{number}"
            attempt = Attempt(
                job_id=placement.job_id,
                number=number,
                state=JobState.STARTING.value,
                resources=list(placement.resources),
                cuda_visible_devices=placement.cuda_visible_devices,
                run_dir=str(run_dir),
                node=placement.node or None,
                settings=runs.settings(),
            )
            session.add(attempt)
            session.flush()
            assert attempt.id is not None
            for resource in placement.resources:
                session.add(Lease(resource=resource, job_id=placement.job_id, attempt_id=attempt.id))
            if job.started_at is None:
                session.execute(update(Job).where(col(Job.id) == job.id).values(started_at=utcnow()))
            try:
                session.commit()
            except IntegrityError:  # a lease already held: the database refuses a double booking
                session.rollback()
                return None
            return StartedAttempt(attempt.id, placement.job_id, run_dir, runs.spec, number=number)

    def attempt_spawned(
        self, attempt_id: int, pid: int, pid_start_time: int | None, workers: list[WorkerRef] | None = None
    ) -> None:
        """Store the worker's pid (and, for a job across nodes, every node's) before it is told to go."""
        every = (
            [{"node": w.node, "pid": w.pid, "start_time": w.start_time} for w in workers]
            if workers and len(workers) > 1
            else None
        )
        with Session(self.engine) as session:
            session.execute(
                update(Attempt)
                .where(col(Attempt.id) == attempt_id)
                .values(pid=pid, pid_start_time=pid_start_time, workers=every)
            )
            session.commit()

    def attempt_adopted(self, attempt_id: int) -> None:
        with Session(self.engine) as session:
            session.execute(update(Attempt).where(col(Attempt.id) == attempt_id).values(adopted=True))
            session.commit()

    def add_records(self, attempt_id: int, records: list[dict[str, Any]], offset: int) -> None:
        """Store records with the offset they reach, in one transaction, so none is stored twice."""
        self.add_records_of([(attempt_id, records, offset)])

    def add_records_of(self, batches: list[tuple[int, list[dict[str, Any]], int]]) -> None:
        """Several attempts' records (attempt id, records, offset) in one transaction: one commit a pass of the
        loop, however many jobs stream, rather than one each (every commit also makes the API's kept answers
        stale, server.api.read_cache)."""
        with Session(self.engine) as session:
            for attempt_id, records, offset in batches:
                self._add_records(session, attempt_id, records, offset)
            session.commit()
        self.committed()

    def _add_records(self, session: Session, attempt_id: int, records: list[dict[str, Any]], offset: int) -> None:
        """One attempt's records in the caller's transaction (server.db.attempt_records); a test breaks one here."""
        add_records(session, attempt_id, records, offset)

    def cancelling_attempts(self) -> list[int]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(Attempt.id)
                .join(Job, col(Job.id) == col(Attempt.job_id))
                .where(Job.state == JobState.CANCELLING.value, col(Attempt.ended_at).is_(None))
            ).all()
        return [r for r in rows if r is not None]

    def live_attempts(self) -> list[LiveAttempt]:
        """Every attempt without an end, read column by column: one bad row is reported, not fatal to the rest."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(
                    Attempt.id,
                    Attempt.job_id,
                    Attempt.run_dir,
                    Attempt.pid,
                    Attempt.pid_start_time,
                    Attempt.metrics_offset,
                    Job.state,
                    Attempt.node,
                    Attempt.workers,
                    Attempt.resources,
                )
                .join(Job, col(Job.id) == col(Attempt.job_id))
                .where(col(Attempt.ended_at).is_(None))
            ).all()
        return [_live(*row) for row in rows if row[0] is not None]

    def end_facts(self, attempt_id: int) -> EndFacts | None:
        """What the ending of a live attempt reads (scheduler.policy.endings); None when it ended or is gone."""
        with Session(self.engine) as session:
            attempt = session.get(Attempt, attempt_id)
            job = session.get(Job, attempt.job_id) if attempt is not None else None
            if attempt is None or job is None or attempt.ended_at is not None:
                return None
            assert job.id is not None
            return EndFacts(
                job_id=job.id,
                state=JobState(job.state),
                spec=job.spec,
                tried=list(job.tried),
                oom_retries=job.oom_retries,
                node_retries=job.node_retries,
                need_bytes=job.need_bytes,
                settings=attempt.settings,
                peak_memory_gib=attempt.peak_memory_gib,
                newest=_is_newest(session, job.id, attempt.number),
            )

    def write_end(self, attempt_id: int, ending: Ending, exit_code: int | None, log_tail: str) -> bool:
        """End the attempt, move the job as decided and release its leases: one transaction.

        Every change of the job's state is a compare-and-set on the state the decision read; False
        (rolled back) when one lost (the API moved the job meanwhile, a cancel) or the attempt has
        ended already: the caller decides again from a fresh read.
        """
        now = utcnow()
        with Session(self.engine) as session:
            if _write_end(session, attempt_id, ending, exit_code, log_tail, now):
                session.commit()
                return True
            session.rollback()
            return False

    def fail_attempt(self, attempt_id: int, reason: str) -> None:
        """End an attempt the daemon cannot handle (a row it cannot read, records it cannot store), saying why.

        Plain statements that read nothing but the job's id, so that what made the attempt unmanageable
        cannot stop this too. A cancelling job ends cancelled, any other live one failed.
        """
        now = utcnow()
        with Session(self.engine) as session:
            found = session.exec(select(Attempt.job_id, Attempt.number).where(Attempt.id == attempt_id)).first()
            session.execute(
                update(Attempt)
                .where(col(Attempt.id) == attempt_id, col(Attempt.ended_at).is_(None))
                .values(state=JobState.FAILED.value, ended_at=now, reason=reason)
            )
            if found is not None and _is_newest(session, *found):
                for frm, to in (
                    ([JobState.STARTING, JobState.RUNNING], JobState.FAILED),
                    ([JobState.CANCELLING], JobState.CANCELLED),
                ):
                    transition(session, found[0], to, frm, ended_at=now, reason=reason)
            session.execute(delete(Lease).where(col(Lease.attempt_id) == attempt_id))
            session.commit()

    def heartbeat(self, pid: int) -> None:
        """Rewrite the daemon's row: the proof, for /healthz, that the database still takes writes."""
        with Session(self.engine) as session:
            now = utcnow()
            done = session.execute(update(Daemon).where(col(Daemon.id) == 1).values(pid=pid, beat_at=now))
            if done.rowcount == 0:  # type: ignore[attr-defined]
                session.add(Daemon(id=1, pid=pid, started_at=now, beat_at=now))
            session.commit()


def _write_end(
    session: Session, attempt_id: int, ending: Ending, exit_code: int | None, log_tail: str, now: datetime
) -> bool:
    """The statements of write_end, in order: the job's moves, the attempt's end, its leases, a requeue."""
    job_id, frm = ending.job_id, ending.frm
    for to in ending.steps or ():
        values = dict(ended_at=now, **ending.job_values) if to == ending.attempt_state else {}
        if not transition(session, job_id, to, frm, **values):
            return False
        frm = to
    ended = session.execute(
        update(Attempt)
        .where(col(Attempt.id) == attempt_id, col(Attempt.ended_at).is_(None))
        .values(
            state=ending.attempt_state.value,
            ended_at=now,
            exit_code=exit_code,
            reason=ending.attempt_reason,
            log_tail=log_tail or None,
        )
    )
    if ended.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.execute(delete(Lease).where(col(Lease.attempt_id) == attempt_id))
    if ending.steps is None or ending.requeue is None:
        return True
    return transition(session, job_id, JobState.QUEUED, ending.attempt_state, ended_at=None, **ending.requeue)


def _is_newest(session: Session, job_id: int, number: int) -> bool:
    """Whether attempt `number` is the job's newest: only the newest may move the job's state."""
    return session.exec(select(func.max(Attempt.number)).where(Attempt.job_id == job_id)).one() == number


def _queued(job_id: Any, priority: Any, gpus: Any, need: Any, gpu_ids_text: Any) -> QueuedJob:
    ids = json.loads(gpu_ids_text) if gpu_ids_text else None
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
        raise ValueError(f"gpu_ids is {str(gpu_ids_text)[:80]!r}, not a list of GPU indices")
    return QueuedJob(
        job_id=int(job_id),
        priority=int(priority),
        seq=int(job_id),
        gpus=int(gpus),
        need_bytes=int(need or 0),
        gpu_ids=tuple(ids) if ids else None,
    )


def _live(
    attempt_id: Any,
    job_id: Any,
    run_dir: Any,
    pid: Any,
    pid_start_time: Any,
    offset: Any,
    state: Any,
    node: Any = None,
    workers: Any = None,
    resources: Any = None,
) -> LiveAttempt:
    """One live attempt's row as recovery needs it; a value of the wrong type is reported as the row's problem."""
    try:
        return LiveAttempt(
            attempt_id=int(attempt_id),
            job_id=int(job_id),
            run_dir=Path(str(run_dir)),
            pid=None if pid is None else int(pid),
            pid_start_time=None if pid_start_time is None else int(pid_start_time),
            metrics_offset=int(offset or 0),
            cancelling=state == JobState.CANCELLING.value,
            node=str(node or ""),
            workers=tuple(
                WorkerRef(str(w["node"]), int(w["pid"]), None if w["start_time"] is None else int(w["start_time"]))
                for w in workers or []
            ),
            nodes=sorted({r.split("/", 1)[0] for r in resources or [] if "/" in str(r)}),
        )
    except (TypeError, ValueError, KeyError) as exc:
        return LiveAttempt(
            int(attempt_id), int(job_id), Path("."), None, None, 0, False, problem=f"its row cannot be read: {exc}"
        )
