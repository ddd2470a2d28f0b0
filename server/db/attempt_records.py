"""One attempt's new records in the caller's transaction: the rows, their events, and what they say of the attempt.

Each record passes through `storable` first (scheduler.policy.records): one the database or a
JSON response could not hold is kept raw with the reason, and the attempt's step counters only
ever take numbers in range. A `start` record moves a starting job to running, and hides earlier
attempts' records past the step it resumed from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from scheduler.policy.records import Storable, as_step, finite_number, record_time, storable
from scheduler.policy.states import JobState
from server.db.event_log import add_events, record_event
from server.db.models import Attempt, MetricRecord, as_utc, utcnow
from server.db.transitions import transition

log = logging.getLogger("ftq.store")

RHYTHM_WEIGHT = 0.3  # how much the newest gap between records moves the attempt's usual interval


@dataclass
class _Attempt:
    """What the records change of their attempt, as they are read in order."""

    attempt_id: int
    job_id: int
    number: int
    state: str
    last_at: datetime | None
    interval: float | None
    peak: float | None
    changes: dict[str, Any] = field(default_factory=dict)  # the attempt's columns to write
    events: list[Any] = field(default_factory=list)  # not written yet (server.db.event_log)


def add_records(session: Session, attempt_id: int, records: list[dict[str, Any]], offset: int) -> None:
    """One attempt's records and the offset they reach, in the caller's transaction (none stored twice)."""
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
    seen = _Attempt(attempt_id, job_id, number, state, as_utc(last_at), interval, peak, {"metrics_offset": offset})
    for item in kept:
        if item.valid:
            _take(session, seen, item)
        else:
            log.warning("attempt %s: a record kept raw: %s", attempt_id, item.data.get("reason"))
    if kept:  # one statement for the batch: the ORM's unit of work per record cost the loop most of its time
        rows = [dict(job_id=job_id, attempt_id=attempt_id, kind=i.kind, step=i.step, data=i.data) for i in kept]
        session.execute(MetricRecord.__table__.insert(), rows)  # type: ignore[attr-defined]
    add_events(session, seen.events)  # what the event streams send of them (server.db.event_log)
    seen.changes.update(last_record_at=seen.last_at, record_interval_s=seen.interval)
    session.execute(update(Attempt).where(col(Attempt.id) == attempt_id).values(**seen.changes))


def _take(session: Session, seen: _Attempt, item: Storable) -> None:
    """What one valid record says: its event, the attempt's rhythm, steps and peak; a start's state change."""
    record = item.data
    event = record_event(seen.job_id, seen.number, record)
    if event is not None:
        seen.events.append(event)
    when = record_time(record) or utcnow()
    if seen.last_at is not None and when >= seen.last_at:
        gap = (when - seen.last_at).total_seconds()
        seen.interval = gap if seen.interval is None else (1 - RHYTHM_WEIGHT) * seen.interval + RHYTHM_WEIGHT * gap
    seen.last_at = max(when, seen.last_at) if seen.last_at is not None else when
    if record.get("current_steps") is not None:
        seen.changes["last_step"] = item.step
    if record.get("total_steps") is not None:
        seen.changes["total_steps"] = as_step(record["total_steps"])
    reached = finite_number(record.get("peak_vram_reserved", record.get("vram_reserved")))
    if reached is not None:
        seen.peak = seen.changes["peak_memory_gib"] = max(reached, seen.peak or 0)
    if item.kind == "start":
        _started(session, seen, record)


def _started(session: Session, seen: _Attempt, record: dict[str, Any]) -> None:
    """A start record: earlier attempts' records past its resume step are hidden; a starting job is running."""
    resumed = as_step(record.get("resumed_from_step"))
    if resumed is not None:
        seen.changes["resumed_from_step"] = resumed
        _supersede(session, seen.job_id, seen.attempt_id, resumed)
    if seen.state == JobState.STARTING.value:
        # The record's event first, then the state it causes: in the log as it happened.
        add_events(session, seen.events)
        seen.events = []
        if transition(session, seen.job_id, JobState.RUNNING, JobState.STARTING):
            seen.state = seen.changes["state"] = JobState.RUNNING.value


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
