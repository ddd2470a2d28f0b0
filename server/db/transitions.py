"""A job's state changes on the database: compare-and-set on the state that was read.

The API's threads and the scheduler's thread both write, so every change is
`UPDATE jobs SET state = <to> WHERE id = ? AND state IN (<what was read>)`, then
the row count: a change that lost a race does nothing and says so, and the
caller decides again from a fresh read (STYLE.md 4, scheduler.policy.states' table).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from scheduler.policy.states import JobState, allowed_from
from server.db.event_log import add_state_event
from server.db.models import Attempt, Job


def transition(session: Session, job_id: int, to: JobState, frm: JobState | Iterable[JobState], **values: Any) -> bool:
    """Move a job from the state that was read (`frm`) to `to`; False when the job is no longer in it.

    A compare-and-set on the state the caller read, never on every state that may lead to `to`: a cancel
    that read `queued` must not succeed on a job that has meanwhile become starting -> cancelling.
    """
    sources = [frm] if isinstance(frm, JobState) else list(frm)
    allowed = allowed_from(to)
    bad = [s.value for s in sources if s not in allowed]
    if bad:
        raise ValueError(f"{', '.join(bad)} -> {to.value} is not a transition of the job state machine")
    result = session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.state).in_([s.value for s in sources]))
        .values(state=to.value, **values)
    )
    changed = result.rowcount == 1  # type: ignore[attr-defined]
    if changed:  # the event streams learn of it in the same transaction (server.db.event_log)
        add_state_event(session, job_id)
    return changed


def current_attempt(session: Session, job_id: int) -> Attempt | None:
    return session.exec(
        select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number).desc()).limit(1)
    ).first()
