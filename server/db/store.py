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
from pathlib import Path
from typing import Any

from sqlalchemy import Text, cast, delete, func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, col, select

from scheduler.contract import LiveAttempt, StartedAttempt
from scheduler.executor import WorkerRef
from scheduler.policy.exits import Outcome
from scheduler.policy.placement import Placement, QueuedJob
from scheduler.policy.records import as_step, finite_number, record_time, storable
from scheduler.policy.retry import memory_settings, next_after_oom, ran_spec, retry_spec
from scheduler.policy.states import ACTIVE, JobState, route
from server.db.event_log import add_events, record_event
from server.db.models import Attempt, Daemon, Job, Lease, MetricRecord, as_utc, utcnow
from server.db.transitions import transition
from server.services.admission import estimate
from server.services.attempt_spec import attempt_spec
from worker.spec.job import JobSpec
from worker.spec.units import GIB as GiB

log = logging.getLogger("ftq.store")

# How many times a transaction whose compare-and-set lost a race (the state changed between our read and our
# write) is tried again from a fresh read before giving up.
CAS_TRIES = 10


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

    def begin_attempt(self, placement: Placement, runs_dir: Path) -> StartedAttempt | None:
        """queued -> starting, a new attempt and its leases, all or nothing.

        The attempt runs the job's spec with the micro-batch auto_micro_batch picks for the room its
        GPUs offer (server.services.attempt_spec); its settings say what it runs and why.
        """
        with Session(self.engine) as session:
            job = session.get(Job, placement.job_id)
            if job is None or not transition(
                session, placement.job_id, JobState.STARTING, JobState.QUEUED, reason=None
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
            earlier = session.exec(
                select(Attempt.settings, Attempt.peak_memory_gib)
                .where(Attempt.job_id == placement.job_id, col(Attempt.peak_memory_gib).is_not(None))
                .order_by(col(Attempt.number).desc())
            ).all()
            runs = attempt_spec(job.spec, placement.room_bytes, [tuple(row) for row in earlier], job.tried)
            if runs.note is not None:
                log.info("job %s attempt %s: auto_micro_batch %s", placement.job_id, number, runs.note)
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
            return StartedAttempt(attempt.id, placement.job_id, run_dir, runs.spec)

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
        stale, server.services.read_cache)."""
        with Session(self.engine) as session:
            for attempt_id, records, offset in batches:
                self._add_records(session, attempt_id, records, offset)
            session.commit()
        self.committed()

    def _add_records(self, session: Session, attempt_id: int, records: list[dict[str, Any]], offset: int) -> None:
        """One attempt's records and the offset they reach, in the caller's transaction.

        Each record passes through `storable` first: one the database or a JSON response could not hold
        is kept raw with the reason, and the attempt's step counters only ever take numbers in range.
        """
        kept = [storable(record) for record in records]
        found = session.execute(
            select(
                Attempt.job_id, Attempt.state, Attempt.last_record_at, Attempt.record_interval_s,
                Attempt.peak_memory_gib, Attempt.number,
            ).where(col(Attempt.id) == attempt_id)
        ).first()  # fmt: skip
        if found is None:
            return
        job_id, state, last_at, interval, peak, number = found
        last_at = as_utc(last_at)
        changes: dict[str, Any] = {"metrics_offset": offset}
        rows, events = [], []
        for item in kept:
            rows.append(
                {
                    "job_id": job_id,
                    "attempt_id": attempt_id,
                    "kind": item.kind,
                    "step": item.step,
                    "data": item.data,
                }
            )
            if not item.valid:
                log.warning("attempt %s: a record kept raw: %s", attempt_id, item.data.get("reason"))
                continue
            record = item.data
            event = record_event(job_id, number, record)
            if event is not None:
                events.append(event)
            when = record_time(record) or utcnow()
            if last_at is not None and when >= last_at:
                gap = (when - last_at).total_seconds()
                interval = gap if interval is None else (1 - RHYTHM_WEIGHT) * interval + RHYTHM_WEIGHT * gap
            last_at = max(when, last_at) if last_at is not None else when
            if record.get("current_steps") is not None:
                changes["last_step"] = item.step
            if record.get("total_steps") is not None:
                changes["total_steps"] = as_step(record["total_steps"])
            reached = finite_number(record.get("peak_vram_reserved", record.get("vram_reserved")))
            if reached is not None:
                peak = changes["peak_memory_gib"] = max(reached, peak or 0)
            if item.kind == "start":
                resumed = as_step(record.get("resumed_from_step"))
                if resumed is not None:
                    changes["resumed_from_step"] = resumed
                    _supersede(session, job_id, attempt_id, resumed)
                if state == JobState.STARTING.value:
                    # The record's event first, then the state it causes: in the log as it happened.
                    add_events(session, events)
                    events = []
                    if transition(session, job_id, JobState.RUNNING, JobState.STARTING):
                        state = changes["state"] = JobState.RUNNING.value
        if rows:  # one statement for the batch: the ORM's unit of work per record cost the loop most of its time
            session.execute(MetricRecord.__table__.insert(), rows)  # type: ignore[attr-defined]
        add_events(session, events)  # what the event streams send of them (server.db.event_log)
        changes.update(last_record_at=last_at, record_interval_s=interval)
        session.execute(update(Attempt).where(col(Attempt.id) == attempt_id).values(**changes))

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

    def finish_attempt(self, attempt_id: int, outcome: Outcome, exit_code: int | None, log_tail: str) -> None:
        """End the attempt, move the job to its outcome and release its leases: one transaction.

        Every change of the job's state is a compare-and-set on the state read in this transaction; when
        the API moved the job meanwhile (a cancel), the transaction is rolled back and decided again from
        a fresh read. An out-of-memory ending is retried here, in the same transaction, when the job's
        `oom_retry` budget allows: the job goes back to the queue with smaller settings and a memory
        requirement of at least the peak this attempt reached. An attempt that never trained goes back
        to the queue as it was.
        """
        for _ in range(CAS_TRIES):
            with Session(self.engine) as session:
                attempt = session.get(Attempt, attempt_id)
                job = session.get(Job, attempt.job_id) if attempt is not None else None
                if attempt is None or job is None or attempt.ended_at is not None:
                    return
                if self._finish(session, job, attempt, outcome, exit_code, log_tail):
                    session.commit()
                    return
                session.rollback()
        raise RuntimeError(f"attempt {attempt_id}: its job kept changing state while the attempt was being ended")

    def _finish(
        self, session: Session, job: Job, attempt: Attempt, outcome: Outcome, exit_code: int | None, log_tail: str
    ) -> bool:
        """The statements of finish_attempt; False when a compare-and-set lost (the caller rolls back)."""
        assert job.id is not None and attempt.id is not None
        now = utcnow()
        state = JobState(job.state)
        target, reason = outcome.state, outcome.reason
        if state == JobState.CANCELLING:
            target = JobState.CANCELLED  # a cancel asked for wins over how the process happened to end
        retry, ran_out, ran = None, {}, job.spec
        if target == JobState.OOM:
            ran = ran_spec(job.spec, attempt.settings)  # the micro-batch auto_micro_batch chose, not the one asked
            retry = next_after_oom(ran, job.tried, job.oom_retries, int(job.spec.get("oom_retry", 3)))
            reason = f"{outcome.reason}; {retry.reason}"
            # Kept even when giving up, so that a later retry never comes back to these settings.
            ran_out = {"tried": [*job.tried, memory_settings(ran)]}
        node_retry = outcome.node_lost and target == JobState.FAILED
        if node_retry:
            budget = int(job.spec.get("node_retry", 3))
            node_retry = job.node_retries < budget
            reason = (
                f"{outcome.reason}; queued again to resume from its last checkpoint on other GPUs "
                f"(node retry {job.node_retries + 1} of {budget})"
                if node_retry
                else f"{outcome.reason}; not queued again: its node_retry budget ({budget}) is spent"
            )
        steps = route(state, target) if state in ACTIVE and _is_newest(session, job.id, attempt.number) else None
        if steps is None:
            # Not this attempt's to decide (the job is not live, or a newer attempt exists): the attempt
            # still ends and its GPUs are freed, and the job's state stays what the database says.
            log.warning("attempt %s ended (%s) while job %s is %s", attempt.id, target.value, job.id, job.state)
        else:
            frm = state
            for to in steps:
                values = dict(ended_at=now, reason=reason, **ran_out) if to == target else {}
                if not transition(session, job.id, to, frm, **values):
                    return False
                frm = to
        ended = session.execute(
            update(Attempt)
            .where(col(Attempt.id) == attempt.id, col(Attempt.ended_at).is_(None))
            .values(
                state=target.value,
                ended_at=now,
                exit_code=exit_code,
                reason=outcome.reason,
                log_tail=log_tail or None,
            )
        )
        if ended.rowcount != 1:  # type: ignore[attr-defined]
            return False
        session.execute(delete(Lease).where(col(Lease.attempt_id) == attempt.id))
        if steps is None:
            return True
        if retry is not None and retry.overrides is not None:
            spec = retry_spec(ran, retry.overrides)
            peak = int((attempt.peak_memory_gib or 0) * GiB)
            return transition(
                session,
                job.id,
                JobState.QUEUED,
                JobState.OOM,
                spec=spec,
                need_bytes=max(estimate_need(spec), peak, job.need_bytes or 0) or None,
                oom_retries=job.oom_retries + 1,
                ended_at=None,
            )
        if node_retry:
            return transition(
                session, job.id, JobState.QUEUED, JobState.FAILED, ended_at=None, node_retries=job.node_retries + 1
            )
        if outcome.requeue and target == JobState.FAILED:
            return transition(session, job.id, JobState.QUEUED, JobState.FAILED, ended_at=None)
        return True

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

    # ---- reads for the API ----

    def bound_resources(self, session: Session) -> dict[str, int]:
        """resource -> job id, for every lease held."""
        return {lease.resource: lease.job_id for lease in session.exec(select(Lease)).all()}


def _supersede(session: Session, job_id: int, attempt_id: int, resumed_from_step: int) -> None:
    """Hide earlier attempts' records past the step this attempt resumed from: those steps are trained again."""
    session.execute(
        update(MetricRecord)
        .where(
            col(MetricRecord.job_id) == job_id,
            col(MetricRecord.attempt_id) != attempt_id,
            col(MetricRecord.step) > resumed_from_step,
            col(MetricRecord.kind).in_(["metric", "eval", "checkpoint"]),
        )
        .values(superseded=True)
    )


def estimate_need(spec: dict[str, Any]) -> int:
    """The per-GPU estimate of a stored spec (0 when it cannot be made)."""
    try:
        found = estimate(JobSpec.model_validate(spec))
    except ValueError:
        return 0
    return found.per_gpu if found is not None and int(spec.get("gpus", 1)) > 0 else 0


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


ACTIVE_VALUES = [s.value for s in ACTIVE]
RHYTHM_WEIGHT = 0.3  # how much the newest gap between records moves the attempt's usual interval
