"""The database side of the scheduler: every state change as one transaction.

`transition` is a compare-and-set (`UPDATE ... WHERE id = ? AND state IN (...)`,
then the row count), because the API's threads and the scheduler's thread both
write. `SqlStore` implements `scheduler.loop.Store` on top of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from scheduler.exits import Outcome
from scheduler.loop import LiveAttempt, StartedAttempt
from scheduler.placement import GiB, Placement, QueuedJob
from scheduler.retry import memory_settings, next_after_oom
from scheduler.states import ACTIVE, JobState, allowed_from
from server.admission import estimate
from server.models import Attempt, Job, Lease, MetricRecord, utcnow
from worker.spec import JobSpec


def transition(session: Session, job_id: int, to: JobState, **values: Any) -> bool:
    """Move a job to `to` if its current state allows it; False when it did not."""
    sources = [s.value for s in allowed_from(to)]
    result = session.execute(
        update(Job).where(col(Job.id) == job_id, col(Job.state).in_(sources)).values(state=to.value, **values)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def current_attempt(session: Session, job_id: int) -> Attempt | None:
    return session.exec(
        select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number).desc()).limit(1)
    ).first()


class SqlStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def queued_jobs(self) -> list[QueuedJob]:
        with Session(self.engine) as session:
            query = select(Job.id, Job.priority, Job.gpus, Job.need_bytes, Job.gpu_ids)
            rows = session.exec(query.where(Job.state == JobState.QUEUED.value)).all()
        return [
            QueuedJob(job_id=i, priority=p, seq=i, gpus=g, need_bytes=need or 0, gpu_ids=tuple(ids) if ids else None)
            for i, p, g, need, ids in rows
            if i is not None
        ]

    def leased_resources(self) -> set[str]:
        with Session(self.engine) as session:
            return set(session.exec(select(Lease.resource)).all())

    def begin_attempt(self, placement: Placement, runs_dir: Path) -> StartedAttempt | None:
        """queued -> starting, a new attempt and its leases, all or nothing."""
        with Session(self.engine) as session:
            job = session.get(Job, placement.job_id)
            if job is None or not transition(session, placement.job_id, JobState.STARTING, reason=None):
                session.rollback()
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
                settings=memory_settings(job.spec),
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
            return StartedAttempt(attempt.id, placement.job_id, run_dir, dict(job.spec))

    def attempt_spawned(self, attempt_id: int, pid: int, pid_start_time: int | None) -> None:
        with Session(self.engine) as session:
            session.execute(
                update(Attempt).where(col(Attempt.id) == attempt_id).values(pid=pid, pid_start_time=pid_start_time)
            )
            session.commit()

    def attempt_adopted(self, attempt_id: int) -> None:
        with Session(self.engine) as session:
            session.execute(update(Attempt).where(col(Attempt.id) == attempt_id).values(adopted=True))
            session.commit()

    def add_records(self, attempt_id: int, records: list[dict[str, Any]], offset: int) -> None:
        """Store records with the offset they reach, in one transaction, so none is stored twice."""
        with Session(self.engine) as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None:
                return
            changes: dict[str, Any] = {"metrics_offset": offset}
            for record in records:
                step = _as_int(record.get("current_steps")) or 0
                session.add(
                    MetricRecord(
                        job_id=attempt.job_id,
                        attempt_id=attempt_id,
                        kind=str(record.get("kind", "metric")),
                        step=step,
                        data=record,
                    )
                )
                if record.get("current_steps") is not None:
                    changes["last_step"] = step
                if record.get("total_steps") is not None:
                    changes["total_steps"] = _as_int(record["total_steps"])
                peak = record.get("peak_vram_reserved", record.get("vram_reserved"))
                if isinstance(peak, (int, float)):
                    changes["peak_memory_gib"] = max(
                        peak, changes.get("peak_memory_gib") or attempt.peak_memory_gib or 0
                    )
                if record.get("kind") == "start":
                    resumed = _as_int(record.get("resumed_from_step"))
                    if resumed is not None:
                        changes["resumed_from_step"] = resumed
                        _supersede(session, attempt.job_id, attempt_id, resumed)
                    if attempt.state == JobState.STARTING.value and transition(
                        session, attempt.job_id, JobState.RUNNING
                    ):
                        changes["state"] = JobState.RUNNING.value
            session.execute(update(Attempt).where(col(Attempt.id) == attempt_id).values(**changes))
            session.commit()

    def cancelling_attempts(self) -> list[int]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(Attempt.id)
                .join(Job, col(Job.id) == col(Attempt.job_id))
                .where(Job.state == JobState.CANCELLING.value, col(Attempt.ended_at).is_(None))
            ).all()
        return [r for r in rows if r is not None]

    def live_attempts(self) -> list[LiveAttempt]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(Attempt, Job.state)
                .join(Job, col(Job.id) == col(Attempt.job_id))
                .where(col(Attempt.ended_at).is_(None))
            ).all()
        return [
            LiveAttempt(
                attempt_id=a.id,
                job_id=a.job_id,
                run_dir=Path(a.run_dir),
                pid=a.pid,
                pid_start_time=a.pid_start_time,
                metrics_offset=a.metrics_offset,
                cancelling=state == JobState.CANCELLING.value,
            )
            for a, state in rows
            if a.id is not None
        ]

    def finish_attempt(self, attempt_id: int, outcome: Outcome, exit_code: int | None, log_tail: str) -> None:
        """End the attempt, move the job to its outcome and release its leases: one transaction.

        An out-of-memory ending is retried here, in the same transaction, when the
        job's `oom_retry` budget allows: the job goes back to the queue with smaller
        settings and a memory requirement of at least the peak this attempt reached.
        """
        with Session(self.engine) as session:
            attempt = session.get(Attempt, attempt_id)
            job = session.get(Job, attempt.job_id) if attempt is not None else None
            if attempt is None or job is None or attempt.ended_at is not None:
                return
            now = utcnow()
            target, reason = outcome.state, outcome.reason
            if job.state == JobState.CANCELLING.value:
                target = JobState.CANCELLED  # a cancel asked for wins over how the process happened to end
            retry, ran_out = None, {}
            if target == JobState.OOM:
                retry = next_after_oom(job.spec, job.tried, job.oom_retries, int(job.spec.get("oom_retry", 3)))
                reason = f"{outcome.reason}; {retry.reason}"
                # Kept even when giving up, so that a later retry never comes back to these settings.
                ran_out = {"tried": [*job.tried, memory_settings(job.spec)]}
            # Should the job not be in a live state, the attempt still ends and its GPUs are freed.
            transition(session, job.id, target, ended_at=now, reason=reason, **ran_out)
            session.execute(
                update(Attempt)
                .where(col(Attempt.id) == attempt_id)
                .values(
                    state=target.value,
                    ended_at=now,
                    exit_code=exit_code,
                    reason=outcome.reason,
                    log_tail=log_tail or None,
                )
            )
            session.execute(delete(Lease).where(col(Lease.attempt_id) == attempt_id))
            if retry is not None and retry.overrides is not None:
                spec = {**job.spec, **retry.overrides}
                peak = int((attempt.peak_memory_gib or 0) * GiB)
                transition(
                    session,
                    job.id,
                    JobState.QUEUED,
                    spec=spec,
                    need_bytes=max(estimate_need(spec), peak, job.need_bytes or 0) or None,
                    oom_retries=job.oom_retries + 1,
                    ended_at=None,
                )
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


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


ACTIVE_VALUES = [s.value for s in ACTIVE]
