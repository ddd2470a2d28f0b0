"""The event log on the database: what the event streams serve, written beside what it reports.

Every state change (server.db.transitions), every stored worker record (server.db.store), every GPU snapshot and
alert (server.live.watchers) adds a row to `events` in the transaction that makes the change, so a client that follows
the log sees exactly what the database says, in the order it was committed, across restarts of the daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from scheduler.policy.states import TERMINAL
from server.db.models import Event, Job, utcnow

TERMINAL_STATES = frozenset(s.value for s in TERMINAL)
RECORD_KINDS = frozenset({"start", "metric", "eval", "checkpoint", "end"})
# Kinds that only the all-jobs stream carries: they belong to the machine, not to one job.
MACHINE_KINDS = frozenset({"gpus", "alert"})


@dataclass(frozen=True)
class LoggedEvent:
    """One event as the streams send it: `id:`, `event:` and the JSON `data:` of an SSE message."""

    id: int
    job_id: int | None
    kind: str
    data: dict[str, Any]

    @cached_property
    def wire(self) -> bytes:
        """The SSE message, encoded once however many clients it goes to."""
        data = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"id: {self.id}\nevent: {self.kind}\ndata: {data}\n\n".encode()

    @property
    def ends_job(self) -> bool:
        """A job's terminal state: its stream ends after it (unless the job is requeued meanwhile)."""
        return self.kind == "state" and self.data.get("state") in TERMINAL_STATES


def stamp() -> str:
    """Event times as the API writes times: ISO 8601 UTC with a Z, to the millisecond."""
    return utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add_events(session: Session, rows: list[tuple[int | None, str, dict[str, Any]]]) -> None:
    """(job id, kind, data) rows in the caller's transaction, in one statement."""
    if rows:
        session.execute(
            Event.__table__.insert(),
            [  # type: ignore[attr-defined]
                {"job_id": j, "kind": k, "data": d} for j, k, d in rows
            ],
        )


def add_state_event(session: Session, job_id: int) -> None:
    """The job's state as the caller's transaction has just made it (name, state and reason read back)."""
    found = session.execute(select(Job.name, Job.state, Job.reason).where(col(Job.id) == job_id)).first()
    if found is not None:
        name, state, reason = found
        data = {"job_id": job_id, "name": name, "state": state, "reason": reason, "at": stamp()}
        add_events(session, [(job_id, "state", data)])


def record_event(job_id: int, attempt: int, record: dict[str, Any]) -> tuple[int, str, dict[str, Any]] | None:
    """The event row of a worker's record, or None for a kind the streams do not carry."""
    kind = record.get("kind")
    if kind not in RECORD_KINDS:
        return None
    return (job_id, str(kind), {"job_id": job_id, "attempt": attempt, "record": record})


def newest_id(session: Session) -> int:
    return session.execute(select(func.max(Event.id))).scalar() or 0


def events_after(session: Session, after: int, job_id: int | None = None, limit: int = 1000) -> list[LoggedEvent]:
    """The events with an id above `after`, oldest first: one job's, or every one."""
    query = select(Event.id, Event.job_id, Event.kind, Event.data).where(col(Event.id) > after)
    if job_id is not None:
        query = query.where(col(Event.job_id) == job_id)
    rows = session.execute(query.order_by(col(Event.id)).limit(limit)).all()
    return [LoggedEvent(*row) for row in rows]


def job_state(session: Session, job_id: int) -> str | None:
    return session.execute(select(Job.state).where(col(Job.id) == job_id)).scalar()
