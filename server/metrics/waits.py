"""GET /metrics' wait histograms: each job's queue wait and submit-to-start, read once and kept.

Neither changes once known: a job's `started_at` is set by its first attempt's start and never again, and
its worker's first `start` record is written once. Both are written in the transaction that adds an event
for the job (server.db.event_log), so a scrape reads only the jobs with events newer than the last scrape's:
with 10,000 jobs, reading every job's two times at each scrape was most of a scrape's cost. A daemon that
starts reads them all once; what is kept is only ever what the database says.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from itertools import accumulate
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from scheduler.policy.records import record_time
from server.db.models import Event, Job, MetricRecord, as_utc
from server.metrics import families

_CHUNK = 500  # job ids per IN (...): far below SQLite's limit on bound parameters


class WaitTally:
    """job id -> seconds, for both histograms, brought up to date from the event log at each scrape.

    The histograms' bucket counts and sums are kept beside the values and changed by what changed, so a
    scrape does not sort every job's wait again (with 10,000 jobs that was a third of a scrape)."""

    def __init__(self, in_sql: bool | None = None) -> None:
        self.queue: dict[int, float] = {}
        self.start: dict[int, float] = {}
        self.in_sql = in_sql  # None: on SQLite (see _waits)
        self._after: int | None = None  # the newest event id the tally has read up to
        self._counts = (_Counts(), _Counts())
        self._lock = threading.Lock()

    def update(self, session: Session) -> tuple[families.Observed, families.Observed]:
        """Read what changed since the last call (everything, the first time), in the caller's snapshot."""
        queue, start, _ = self.update_all(session)
        return queue, start

    def update_all(self, session: Session) -> tuple[families.Observed, families.Observed, list[int] | None]:
        """The same, and the jobs it read again (None: every job), for server.metrics.windows.RecentlyEnded."""
        with self._lock:
            newest = session.execute(select(func.max(Event.id))).scalar() or 0
            if self._after is None:
                changed: list[int] | None = None
            else:
                # The new events by their ids, a range of the primary key, made distinct here: with DISTINCT
                # or `job_id IS NOT NULL` in SQL, SQLite walks the whole (job_id, id) index instead, every
                # event ever logged (70 ms at 230,000 events), however few are new.
                query = select(Event.job_id).where(col(Event.id) > self._after)
                changed = sorted({job_id for job_id in session.execute(query).scalars() if job_id is not None})
            if changed is None or changed:
                for job_ids in [None] if changed is None else _chunks(changed):
                    for kept, counts, read in zip(
                        (self.queue, self.start), self._counts, (queue_waits, submit_to_start), strict=True
                    ):
                        for job_id, wait in read(session, job_ids, self.in_sql).items():
                            if job_id in kept:
                                counts.remove(kept[job_id])
                            kept[job_id] = wait
                            counts.add(wait)
            self._after = newest
            return self._counts[0].observed(), self._counts[1].observed(), changed


class _Counts:
    """A histogram's observations as counts per bucket (not cumulative), their number and their sum."""

    def __init__(self) -> None:
        self.per_bucket = [0] * (len(families.WAIT_BUCKETS) + 1)  # the last one: above every bound
        self.count, self.total = 0, 0.0

    def add(self, value: float, sign: int = 1) -> None:
        value = max(value, 0.0)
        self.per_bucket[bisect_left(families.WAIT_BUCKETS, value)] += sign
        self.count += sign
        self.total += sign * value

    def remove(self, value: float) -> None:
        self.add(value, -1)

    def observed(self) -> families.Observed:
        return families.Observed(tuple(accumulate(self.per_bucket[:-1])), self.count, round(self.total, 3))


def queue_waits(session: Session, job_ids: list[int] | None, in_sql: bool | None = None) -> dict[int, float]:
    """job id -> seconds from its submission to its first attempt's start, for the started jobs (of job_ids)."""
    query = select(Job.id, Job.submitted_at.label("since"), Job.started_at.label("until"))  # type: ignore[attr-defined]
    return _waits(session, _of(query.where(col(Job.started_at).is_not(None)), job_ids), in_sql)


def submit_to_start(session: Session, job_ids: list[int] | None, in_sql: bool | None = None) -> dict[int, float]:
    """job id -> seconds from its submission to the timestamp of its worker's first `start` record."""
    first_start = (
        select(MetricRecord.data["timestamp"].as_string())
        .where(col(MetricRecord.job_id) == col(Job.id), col(MetricRecord.kind) == "start")
        .order_by(col(MetricRecord.id))
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )
    query = select(Job.id, Job.submitted_at.label("since"), first_start.label("until"))  # type: ignore[attr-defined]
    return _waits(session, _of(query.where(col(Job.started_at).is_not(None)), job_ids), in_sql)


def _of(query: Any, job_ids: list[int] | None) -> Any:
    return query if job_ids is None else query.where(col(Job.id).in_(job_ids))


def _waits(session: Session, query: Any, in_sql: bool | None) -> dict[int, float]:
    """The (id, since, until) rows' differences in seconds, to the millisecond; rows without an `until` left out.

    On SQLite the database subtracts (julianday reads both the columns' and the records' ISO times) and only
    numbers come back: 10,000 times made into Python datetimes cost more than the rest of a scrape. Elsewhere,
    and with `in_sql=False` (the tests compare the two), the times are read and subtracted here.
    """
    pairs = query.subquery()
    if in_sql is None:
        in_sql = session.get_bind().dialect.name == "sqlite"
    if in_sql:
        wait = func.round((func.julianday(pairs.c.until) - func.julianday(pairs.c.since)) * 86400.0, 3)
        rows: Iterable[Any] = session.execute(select(pairs.c.id, wait))
    else:
        found = session.execute(select(pairs.c.id, pairs.c.since, pairs.c.until))
        rows = ((job_id, _seconds(since, until)) for job_id, since, until in found)
    return {job_id: wait for job_id, wait in rows if wait is not None}


def _seconds(since: datetime, until: datetime | str | None) -> float | None:
    end = record_time({"timestamp": until}) if isinstance(until, str) else as_utc(until)
    return round((end - as_utc(since)).total_seconds(), 3) if end is not None else None  # type: ignore[operator]


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    return (ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK))
