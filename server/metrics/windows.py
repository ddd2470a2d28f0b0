"""Which jobs GET /metrics gives series of their own: every live job, and bounded windows of the others.

A series per job costs a scrape (and Prometheus) in proportion to the jobs it covers: 20,000 queued jobs took
more than a second. So the per-job series cover the jobs that hold resources (starting, running, cancelling:
at most one per GPU and CPU slot), the `FTQ_METRICS_QUEUED_JOBS` queued jobs that have waited longest (the
ones FtqQueueWaitLong is about) and the latest `FTQ_METRICS_ENDED_JOBS` jobs that ended in the last hour.
Every job is still counted in the aggregates (ftq_jobs, ftq_queue_longest_wait_seconds,
ftq_job_series_left_out), whatever the windows leave out.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from scheduler.policy.records import record_time
from scheduler.policy.states import TERMINAL, JobState
from server.db.models import Attempt, Event, Job, as_utc

LIVE = (JobState.STARTING.value, JobState.RUNNING.value, JobState.CANCELLING.value)
_TERMINAL = [state.value for state in TERMINAL]
_CHUNK = 500  # job ids per IN (...): far below SQLite's limit on bound parameters


@dataclass
class Window:
    """The jobs that get per-job series, and what the aggregates say of the rest."""

    ids: list[int] = field(default_factory=list)
    queued_since: dict[int, datetime] = field(default_factory=dict)  # for the queued jobs among `ids`
    longest_wait_since: datetime | None = None  # when the longest-waiting queued job entered the queue
    left_out: dict[str, int] = field(default_factory=dict)  # "queued" / "ended" -> jobs without series


def window(session: Session, recently_ended: Mapping[int, datetime], queued_jobs: int, ended_jobs: int) -> Window:
    """The live jobs, the `queued_jobs` longest-waiting queued ones and the latest `ended_jobs` of
    `recently_ended` (job id -> when it ended: RecentlyEnded); what they leave out, counted."""
    live = list(session.execute(select(Job.id).where(col(Job.state).in_(LIVE))).scalars())
    longest = longest_queued(session, max(queued_jobs, 1))
    shown_queued = longest[:queued_jobs]
    ended = heapq.nlargest(ended_jobs, recently_ended, key=lambda job_id: (recently_ended[job_id], job_id))
    queued_count = session.execute(select(func.count()).where(col(Job.state) == JobState.QUEUED.value)).scalar()
    return Window(
        ids=sorted({*live, *(job_id for _, job_id in shown_queued), *ended}),
        queued_since={job_id: since for since, job_id in shown_queued},
        longest_wait_since=longest[0][0] if longest else None,
        left_out={"queued": (queued_count or 0) - len(shown_queued), "ended": len(recently_ended) - len(ended)},
    )


class RecentlyEnded:
    """job id -> when it ended, for the jobs that ended after a moment, kept from scrape to scrape.

    Read whole once; then only the jobs that have new events are read again (every state change adds one:
    server.db.event_log), as server.metrics.waits.WaitTally finds them, so a scrape does not walk every job
    that ever ended to find the few that ended in the last hour.
    """

    def __init__(self) -> None:
        self.ended: dict[int, datetime] = {}

    def update(self, session: Session, changed: list[int] | None, after: datetime) -> dict[int, datetime]:
        query = select(Job.id, Job.state, Job.ended_at)
        if changed is None:
            self.ended = {}
            batches = [query.where(col(Job.state).in_(_TERMINAL), col(Job.ended_at) >= after)]
        else:
            batches = [query.where(col(Job.id).in_(changed[i : i + _CHUNK])) for i in range(0, len(changed), _CHUNK)]
        for batch in batches:
            for job_id, state, ended_at in session.execute(batch):
                when = as_utc(ended_at)
                if state in _TERMINAL and when is not None:
                    self.ended[job_id] = when
                else:  # requeued, or not ended
                    self.ended.pop(job_id, None)
        self.ended = {job_id: when for job_id, when in self.ended.items() if when >= after}
        return self.ended


def longest_queued(session: Session, limit: int, page: int | None = None) -> list[tuple[datetime, int]]:
    """(entered the queue at, job id) of the `limit` queued jobs that have waited longest, longest first.

    A job enters the queue at its submission or later (a retry, a requeue), never before: so the queue is read
    in the order of submission (of ids: the state index keeps a state's rows in id order, so a page costs no
    sort of the whole queue), a page at a time, and the reading stops once a page was submitted after the
    `limit`-th longest wait found so far. With no requeued job that is one page; every job is read only when
    the oldest submissions were all requeued since.
    """
    size = page or max(2 * limit, 64)
    best: list[tuple[float, int, datetime]] = []  # a heap of the `limit` earliest, the latest of them on top
    after = 0
    while True:
        query = select(Job.id, Job.submitted_at).where(col(Job.state) == JobState.QUEUED.value, col(Job.id) > after)
        rows = session.execute(query.order_by(col(Job.id)).limit(size)).all()
        for job_id, since in queued_since(session, [job_id for job_id, _ in rows]).items():
            item = (-since.timestamp(), -job_id, since)
            if len(best) < limit:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)
        if len(rows) < size:
            break
        after = rows[-1][0]
        if len(best) == limit and as_utc(rows[-1][1]) >= best[0][2]:  # type: ignore[operator]
            break
    return sorted(((since, -neg_id) for _, neg_id, since in best), key=lambda pair: (pair[0], pair[1]))


def queued_since(session: Session, job_ids: list[int]) -> dict[int, datetime]:
    """When each queued job entered the queue this time: its newest state event (the one that queued it:
    nothing else happens to a queued job), or for jobs from before the event log the later of its submission
    and its last attempt's end; never before its submission."""
    if not job_ids:
        return {}
    queued_event = (
        select(Event.data["at"].as_string())
        .where(col(Event.job_id) == col(Job.id), col(Event.kind) == "state")
        .order_by(col(Event.id).desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )
    last_end = (
        select(Attempt.ended_at)
        .where(col(Attempt.job_id) == col(Job.id))
        .order_by(col(Attempt.number).desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )
    query = select(Job.id, Job.submitted_at, queued_event, last_end).where(col(Job.id).in_(job_ids))
    return {job_id: _since(submitted, at, ended) for job_id, submitted, at, ended in session.execute(query)}


def _since(submitted_at: datetime, event_at: Any, attempt_ended_at: datetime | None) -> datetime:
    submitted = as_utc(submitted_at)
    assert submitted is not None
    ended = as_utc(attempt_ended_at)
    since = record_time({"timestamp": event_at}) or (max(submitted, ended) if ended is not None else submitted)
    return max(since, submitted)
