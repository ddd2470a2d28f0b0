"""The statements behind the reads that clients poll: GET /jobs/{id}, GET /jobs and a job's records.

Each is built once, at import, with bound parameters, and runs on the session's
connection as a Core statement: building a statement and its cache key, and the ORM's
handling of a result, cost more than SQLite takes to answer these. Each reads only the
columns the API shows, and a job's latest record of a kind is one seek of the metrics
(job_id, kind, id) index, however many records the job has.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Row, and_, bindparam, case, func, union_all
from sqlmodel import Session, col, select

from server.db.models import Attempt, AttemptPublic, Job, JobSummary, MetricRecord

LATEST_KINDS = ("metric", "eval", "end")


class LatestAttempt(NamedTuple):
    """What a job's summary shows of its latest attempt."""

    number: int
    resources: list[str]
    cuda_visible_devices: str | None
    ended_at: datetime | None
    last_step: int | None
    total_steps: int | None
    last_record_at: datetime | None
    record_interval_s: float | None


# A summary's job columns, and those its wait reason and need_gib are made from: never the spec.
_JOB_COLUMNS = [
    getattr(Job, name) for name in (*JobSummary.model_fields, "need_bytes", "gpu_ids") if name in Job.model_fields
]
_ATTEMPT_COLUMNS = [getattr(Attempt, name).label(f"attempt_{name}") for name in LatestAttempt._fields]


def _latest_metric_of(job_id: Any) -> Any:
    return (
        select(MetricRecord.data)
        .where(col(MetricRecord.job_id) == job_id, col(MetricRecord.kind) == "metric")
        .order_by(col(MetricRecord.id).desc())
        .limit(1)
    )


def _page(by_state: bool, newest: bool) -> tuple[Any, Any]:
    latest_number = (
        select(func.max(Attempt.number)).where(col(Attempt.job_id) == col(Job.id)).correlate(Job).scalar_subquery()
    )
    latest_metric = _latest_metric_of(col(Job.id)).correlate(Job).scalar_subquery()
    page = (
        select(*_JOB_COLUMNS, *_ATTEMPT_COLUMNS, latest_metric.label("latest_metric"))
        .outerjoin(Attempt, and_(col(Attempt.job_id) == col(Job.id), col(Attempt.number) == latest_number))
        .order_by(col(Job.id).desc() if newest else col(Job.id))
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )
    count = select(func.count()).select_from(Job)
    if by_state:
        page, count = page.where(Job.state == bindparam("state")), count.where(Job.state == bindparam("state"))
    return page, count


_PAGES = {(by_state, newest): _page(by_state, newest) for by_state in (False, True) for newest in (False, True)}
# A page's rows as named tuples: a SQLAlchemy Row's attribute lookup costs more than the rest of a summary.
PageRow = namedtuple("PageRow", [column.key for column in _PAGES[False, False][0].selected_columns])  # type: ignore[misc]
_ATTEMPT_SLICE = slice(len(_JOB_COLUMNS), len(_JOB_COLUMNS) + len(_ATTEMPT_COLUMNS))

_JOB = select(*_JOB_COLUMNS, Job.spec, Job.estimate).where(col(Job.id) == bindparam("job_id"))

_ATTEMPTS = (
    select(*(getattr(Attempt, name) for name in AttemptPublic.model_fields))
    .where(col(Attempt.job_id) == bindparam("job_id"))
    .order_by(col(Attempt.number))
)


def _latest_records() -> Any:
    latest = [
        select(MetricRecord.id, MetricRecord.kind, MetricRecord.data)
        .where(col(MetricRecord.job_id) == bindparam("job_id"), col(MetricRecord.kind) == kind)
        .order_by(col(MetricRecord.id).desc())
        .limit(1)
        .subquery()
        for kind in LATEST_KINDS
    ]
    return union_all(*(select(q.c.id, q.c.kind, q.c.data) for q in latest))


_LATEST_RECORDS = _latest_records()


def job(session: Session, job_id: int) -> Row[Any] | None:
    """The job's row with the columns its JobPublic is made of; None when there is no such job."""
    return session.connection().execute(_JOB, {"job_id": job_id}).first()


def job_page(
    session: Session, state: str | None, offset: int, limit: int, newest: bool = False
) -> tuple[list[Any], int]:
    """A page of jobs, each a PageRow: its summary's columns, `attempt_*` (None without one) and `latest_metric`;
    by id, the oldest first (or the newest, with `newest`)."""
    page, count = _PAGES[state is not None, newest]
    params = {"offset": offset, "limit": limit, "state": state}
    connection = session.connection()
    rows = [PageRow._make(row) for row in connection.execute(page, params)]
    return rows, int(connection.execute(count, params).scalar_one())


def latest_attempt(row: Any) -> LatestAttempt | None:
    """The latest attempt of a job_page row."""
    if row.attempt_number is None:
        return None
    return LatestAttempt._make(row[_ATTEMPT_SLICE])


def attempts(session: Session, job_id: int) -> list[dict[str, Any]]:
    """The job's attempts in order, each with AttemptPublic's fields."""
    return [dict(row._mapping) for row in session.connection().execute(_ATTEMPTS, {"job_id": job_id})]


def latest_records(session: Session, job_id: int) -> dict[str, tuple[int, dict[str, Any]]]:
    """kind -> (id, data) of the job's latest metric, eval and end record, in one statement.

    A running job has no `end` record: with the job_id index alone, a look for one read
    every other record of the job.
    """
    rows = session.connection().execute(_LATEST_RECORDS, {"job_id": job_id})
    return {kind: (record_id, data) for record_id, kind, data in rows}


def record_filter(job_id: int, since: int | None, kind: str | None, superseded: bool) -> list[Any]:
    """The conditions of GET /jobs/{id}/metrics: the job's records after step `since`, of `kind`, and without
    `superseded` each step once."""
    where = [col(MetricRecord.job_id) == job_id]
    if not superseded:
        # An expression, not the bare column: SQLite then reads the job's records by its job_id index, never
        # walks the superseded index through every other job's records (its plan without ANALYZE).
        where.append(func.coalesce(col(MetricRecord.superseded), False) == False)  # noqa: E712
    if since is not None:
        where.append(col(MetricRecord.step) > since)
    if kind is not None:
        where.append(col(MetricRecord.kind) == kind)
    return where


def records(session: Session, where: list[Any], limit: int) -> list[dict[str, Any]]:
    """The first `limit` records that meet `where`, in the order they were written."""
    query = select(MetricRecord.data).where(*where).order_by(col(MetricRecord.id)).limit(limit)
    return [data for (data,) in session.connection().execute(query)]


def record_counts(session: Session, where: list[Any]) -> dict[str, int]:
    """How many records of each kind meet `where`."""
    query = select(MetricRecord.kind, func.count()).where(*where).group_by(col(MetricRecord.kind))
    return {kind: int(n) for kind, n in session.connection().execute(query)}


def record_values(session: Session, where: list[Any], values: dict[str, str]) -> Iterator[tuple[int, str, Any]]:
    """(id, kind, value) of each record that meets `where`, in order: the value is the field `values` names for
    its kind (None for another kind), read by SQLite's json_extract, so the records themselves are not decoded."""
    value = case(
        *(
            (col(MetricRecord.kind) == kind, func.json_extract(MetricRecord.data, f"$.{key}"))
            for kind, key in values.items()
        )
    )
    query = select(MetricRecord.id, MetricRecord.kind, value).where(*where).order_by(col(MetricRecord.id))
    yield from session.connection().execution_options(yield_per=2000).execute(query).tuples()


IDS_PER_STATEMENT = 900  # under SQLite's oldest bound on a statement's parameters (999)


def records_by_id(session: Session, ids: list[int]) -> list[dict[str, Any]]:
    """The records of these ids (in ascending order), in that order."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        chunk = ids[start : start + IDS_PER_STATEMENT]
        query = select(MetricRecord.data).where(col(MetricRecord.id).in_(chunk)).order_by(col(MetricRecord.id))
        found.extend(data for (data,) in session.connection().execute(query))
    return found
