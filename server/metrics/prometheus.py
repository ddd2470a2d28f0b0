"""GET /metrics' reads: the database and the GPU probe at scrape time, handed to server.metrics.families.

One registry per app (`make_registry`), never prometheus_client's global one: two daemons in one process
(tests) keep apart, and nothing is counted in memory that a restart would lose. Every figure is read from
the database when Prometheus asks, in one read snapshot and a few aggregate statements (a job's latest
attempt, metric and queue event are each one index seek), so a scrape costs the same whether the daemon
has just started or has run for months (the wait histograms read only what changed: server.metrics.waits),
and per-job series only for the jobs server.metrics.windows chooses: the live ones and bounded windows of the
queued and the ended, so 20,000 queued jobs cost a scrape a few aggregate statements, not 20,000 series.
`python -m bench.metrics_scrape` measures it at 10,000 ended and 20,000 queued jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import Metric
from sqlalchemy import and_, func
from sqlmodel import Session, col, select

from scheduler.gpus.types import ProbeError
from scheduler.policy.states import JobState
from server.db.engine import read_snapshot
from server.db.models import Attempt, Job, MetricRecord, as_utc, utcnow
from server.metrics import families
from server.metrics.waits import WaitTally
from server.metrics.windows import RecentlyEnded, window
from server.services.health import health_problems
from server.services.jobs import leases_by_resource
from server.services.loop import Loop
from server.services.machine import recent_gpus_view
from server.services.stall import StallRule

log = logging.getLogger("ftq")

_CHUNK = 500  # job ids per IN (...): far below SQLite's limit on bound parameters


def make_registry(state: Any, version: str) -> CollectorRegistry:
    """The app's registry: ftq's collector (reading `state`'s engine, probe and loop once the daemon has
    started) and the process' own figures (CPU, memory, open files, Python version)."""
    registry = CollectorRegistry()
    registry.register(FtqCollector(state, version))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class FtqCollector:
    """prometheus_client's custom-collector protocol: `collect()` yields the families at each scrape."""

    def __init__(self, state: Any, version: str) -> None:
        self.state = state
        self.version = version
        self.waits = WaitTally()
        self.ended = RecentlyEnded()
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        state = self.state
        settings = state.settings
        loop: Loop = state.loop
        yield from families.daemon_families(
            self.version, health_problems(loop.health, time.monotonic(), settings.tick_s)
        )
        now = utcnow()
        stall = StallRule.of(settings)  # what GET /jobs' stalled_for_s uses, exported for the alert
        with Session(state.engine) as session:
            read_snapshot(session)  # every figure as of one moment
            yield families.jobs_by_state(state_counts(session))
            yield families.attempts_by_outcome(outcome_counts(session))
            with self._lock:  # the two tallies move together, one scrape at a time
                queue_waits, submit_waits, changed = self.waits.update_all(session)
                ended = self.ended.update(session, changed, now - timedelta(seconds=families.RECENT_S))
            yield from families.wait_histograms(queue_waits, submit_waits)
            chosen = window(session, ended, settings.metrics_queued_jobs, settings.metrics_ended_jobs)
            yield from families.queue_families(chosen.longest_wait_since, chosen.left_out, now)
            yield from families.job_families(job_rows(session, chosen.ids, chosen.queued_since), now, stall)
            holders = leases_by_resource(session)
        yield from families.cpu_slot_families(
            settings.cpu_slots, sum(1 for resource in holders if resource.startswith("cpu-"))
        )
        try:
            gpus = recent_gpus_view(state.probe, holders, settings.cpu_slots, set(loop.live_pids().values()))
        except ProbeError as exc:  # /healthz says so (ftq_daemon_healthy 0); the rest of the scrape still counts
            log.warning("GET /metrics: no GPU readings: %s", exc)
            return
        yield from families.gpu_families(gpus)


def state_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(col(Job.state)))
    return {state: count for state, count in rows}


def outcome_counts(session: Session) -> dict[str, int]:
    """Ended attempts by the state they ended in."""
    query = select(Attempt.state, func.count()).where(col(Attempt.ended_at).is_not(None)).group_by(col(Attempt.state))
    return {state: count for state, count in session.execute(query)}


def job_rows(session: Session, job_ids: list[int], queued_since: Mapping[int, datetime]) -> list[families.JobRow]:
    """The jobs `job_ids` (server.metrics.windows chose them), each with its latest attempt and metric record;
    `queued_since`: when the queued ones among them entered the queue."""
    latest_number = (
        select(func.max(Attempt.number)).where(col(Attempt.job_id) == col(Job.id)).correlate(Job).scalar_subquery()
    )
    latest_metric = (
        select(MetricRecord.data)
        .where(col(MetricRecord.job_id) == col(Job.id), col(MetricRecord.kind) == "metric")
        .order_by(col(MetricRecord.id).desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )
    query = (
        select(
            Job.id,
            Job.name,
            Job.state,
            Job.oom_retries,
            Attempt.number,
            Attempt.last_step,
            Attempt.total_steps,
            Attempt.peak_memory_gib,
            Attempt.ended_at,
            Attempt.last_record_at,
            Attempt.record_interval_s,
            latest_metric,
        )  # fmt: skip
        .outerjoin(Attempt, and_(col(Attempt.job_id) == col(Job.id), col(Attempt.number) == latest_number))
        .order_by(col(Job.id))
    )
    rows: list[families.JobRow] = []
    for start in range(0, len(job_ids), _CHUNK):
        found = session.execute(query.where(col(Job.id).in_(job_ids[start : start + _CHUNK])))
        rows += [_job_row(*row, queued_since=queued_since.get(row[0])) for row in found]
    return rows


def _job_row(
    job_id: int,
    name: str,
    state: str,
    oom_retries: int,
    number: int | None,
    last_step: int | None,
    total_steps: int | None,
    peak: float | None,
    attempt_ended_at: datetime | None,
    last_record_at: datetime | None,
    interval: float | None,
    metric: dict[str, Any] | None,
    queued_since: datetime | None,
) -> families.JobRow:
    live = number is not None and attempt_ended_at is None
    return families.JobRow(
        id=job_id,
        name=name,
        state=state,
        last_step=last_step,
        total_steps=total_steps,
        loss=_number(metric, "loss"),
        tokens_per_s=_number(metric, "throughput"),
        peak_memory_gib=peak,
        attempts=number or 0,
        oom_retries=oom_retries,
        last_record_at=as_utc(last_record_at) if live else None,
        record_interval_s=interval if live else None,
        queued_since=queued_since if state == JobState.QUEUED.value else None,
    )


def _number(record: dict[str, Any] | None, key: str) -> float | None:
    value = record.get(key) if record else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
