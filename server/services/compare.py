"""GET /compare: a few jobs side by side (final loss, speed, memory, cost), for the CLI and the dashboard.

`compare_job` is a pure function over plain rows (the job, its attempts, its latest records),
so a test states a job in a few lines; `read_compare` is the one place that reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, SQLModel, col, select

from server.db.engine import read_snapshot
from server.db.models import Attempt, Job, MetricRecord, as_utc, utcnow
from server.services.jobs import no_such_job
from worker.spec.records import hms_seconds

MAX_IDS = 100


class CompareRow(SQLModel):
    """One job of a comparison; null where the job has not got that far (or its records lack it)."""

    id: int
    name: str
    state: str
    final_loss: float | None = None
    final_eval_loss: float | None = None
    steps: int | None = None
    total_steps: int | None = None
    tokens_per_s: float | None = None
    peak_vram_gib: float | None = None
    wall_time_s: float | None = None
    gpu_hours: float | None = None
    result: str | None = None
    attempts: int = 0


class ComparePublic(SQLModel):
    data: list[CompareRow]


@dataclass
class JobRows:
    """What a comparison reads of one job: plain values, as the database holds them."""

    id: int
    name: str
    state: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # started_at, ended_at, resources, peak, steps
    metric: dict[str, Any] | None = None  # the latest metric record not superseded by a later attempt
    eval: dict[str, Any] | None = None  # the latest eval record, likewise
    end: dict[str, Any] | None = None  # the latest end record


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def tokens_per_s(metric: dict[str, Any] | None, end: dict[str, Any] | None) -> float | None:
    """The latest metric's throughput; else its total_tokens over its elapsed time; else the end record's real
    tokens over its elapsed time."""
    for record, tokens_key in ((metric, "total_tokens"), (end, "real_tokens")):
        if not record:
            continue
        throughput = _number(record.get("throughput"))
        if throughput:
            return round(throughput, 2)
        tokens, elapsed = _number(record.get(tokens_key)), hms_seconds(record.get("elapsed_time"))
        if tokens and elapsed:
            return round(tokens / elapsed, 2)
    return None


def gpus_bound(resources: Sequence[str]) -> int:
    """GPUs among an attempt's leased resources (the others are CPU slots, `cpu-N`)."""
    return sum(1 for r in resources if not r.startswith("cpu-"))


def gpu_hours(attempts: Sequence[dict[str, Any]], now: datetime) -> float | None:
    """Sum over attempts of (ended, or now while live, - started) x GPUs bound; None without an attempt."""
    if not attempts:
        return None
    total = 0.0
    for attempt in attempts:
        started, ended = as_utc(attempt["started_at"]), as_utc(attempt.get("ended_at")) or now
        if started is None:
            continue
        total += max((ended - started).total_seconds(), 0.0) * gpus_bound(attempt.get("resources") or [])
    return round(total / 3600, 4)


def compare_job(rows: JobRows, now: datetime) -> CompareRow:
    """One job's line of the comparison."""
    metric, end, last = rows.metric or {}, rows.end or {}, (rows.attempts[-1] if rows.attempts else {})
    peaks = [a["peak_memory_gib"] for a in rows.attempts if a.get("peak_memory_gib") is not None]
    started, ended = as_utc(rows.started_at), as_utc(rows.ended_at)
    wall = (ended or now) - started if started is not None else None
    return CompareRow(
        id=rows.id,
        name=rows.name,
        state=rows.state,
        final_loss=_number(metric.get("loss")),
        final_eval_loss=_number((rows.eval or {}).get("eval_loss")),
        steps=metric.get("current_steps", last.get("last_step")),
        total_steps=metric.get("total_steps") or last.get("total_steps"),
        tokens_per_s=tokens_per_s(rows.metric, rows.end),
        peak_vram_gib=max(peaks) if peaks else None,
        wall_time_s=round(max(wall.total_seconds(), 0.0), 2) if wall is not None else None,
        gpu_hours=gpu_hours(rows.attempts, now),
        # As GET /jobs/{id} gives it: the output path once the job succeeded.
        result=end.get("result") if end.get("status") == "succeeded" else None,
        attempts=len(rows.attempts),
    )


def compare(jobs: Sequence[JobRows], now: datetime) -> ComparePublic:
    return ComparePublic(data=[compare_job(rows, now) for rows in jobs])


# ---- the reads ----

_ATTEMPT_FIELDS = ("started_at", "ended_at", "resources", "peak_memory_gib", "last_step", "total_steps")
_ATTEMPTS = (
    select(*(getattr(Attempt, name) for name in _ATTEMPT_FIELDS))
    .where(col(Attempt.job_id) == bindparam("job_id"))
    .order_by(col(Attempt.number))
)


def _latest(kind: str, live_only: bool) -> Any:
    query = select(MetricRecord.data).where(
        col(MetricRecord.job_id) == bindparam("job_id"), col(MetricRecord.kind) == kind
    )
    if live_only:
        query = query.where(col(MetricRecord.superseded).is_(False))
    return query.order_by(col(MetricRecord.id).desc()).limit(1)


_LATEST = {"metric": _latest("metric", True), "eval": _latest("eval", True), "end": _latest("end", False)}
_JOB = select(Job.id, Job.name, Job.state, Job.started_at, Job.ended_at).where(col(Job.id) == bindparam("job_id"))


def read_compare(session: Session, ids: Sequence[int]) -> tuple[list[JobRows], int | None]:
    """Each asked job's rows, in the order asked, as of one moment; and the first id with no job (or None)."""
    read_snapshot(session)
    connection = session.connection()
    found: list[JobRows] = []
    for job_id in ids:
        params = {"job_id": job_id}
        job = connection.execute(_JOB, params).first()
        if job is None:
            return found, job_id
        latest = {kind: connection.execute(query, params).scalar() for kind, query in _LATEST.items()}
        found.append(
            JobRows(
                id=job.id,
                name=job.name,
                state=job.state,
                started_at=job.started_at,
                ended_at=job.ended_at,
                attempts=[dict(row._mapping) for row in connection.execute(_ATTEMPTS, params)],
                **latest,
            )
        )
    return found, None


def compare_jobs(session: Session, ids: Sequence[int]) -> ComparePublic:
    """GET /compare: the jobs in the order asked; a NotFound naming the first unknown id."""
    rows, missing = read_compare(session, ids)
    if missing is not None:
        raise no_such_job(missing)
    return compare(rows, utcnow())
