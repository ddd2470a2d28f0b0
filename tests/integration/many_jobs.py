"""A data dir holding more jobs and records than a view reads at once, written straight into the tables before the
daemon starts (as long use would leave them): a thousand POSTs would take a minute, these inserts a second."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from server.db.engine import make_engine, upgrade_database
from server.db.models import Attempt, Job, MetricRecord
from server.settings import Settings
from tests.helpers import tiny_spec


def loss_at(step: int) -> float:
    """The loss of the curve the filled job trained: falling, with a wobble, its lowest near the end."""
    return 3.0 * math.exp(-step / 30_000) + 0.1 * math.sin(step / 700) + 0.2


def fill_jobs(data_dir: Path, jobs: int, state: str = "succeeded", records_of_last: int = 0) -> None:
    """`jobs` jobs named job-1 .. job-N (ids 1 .. N), in `state` (an ended one with an attempt, or `queued`
    without); the last one, ended, with `records_of_last` metric records of steps 1 .. N between its start and
    end records."""
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(Settings(data_dir=data_dir))
    upgrade_database(engine)
    now = datetime.now(timezone.utc)
    job_rows: list[dict[str, Any]] = []
    attempt_rows: list[dict[str, Any]] = []
    for i in range(1, jobs + 1):
        job_state = "succeeded" if i == jobs and records_of_last else state
        submitted = now - timedelta(seconds=jobs - i + 60)
        ended = job_state != "queued"
        spec = tiny_spec(name=f"job-{i}", gpus=0)
        job_rows.append(
            dict(id=i, name=f"job-{i}", state=job_state, priority=0, gpus=0, spec=spec, submitted_at=submitted,
                 started_at=submitted if ended else None, ended_at=now if ended else None, oom_retries=0, tried=[])
        )  # fmt: skip
        if ended:
            last = records_of_last if i == jobs else 20
            attempt_rows.append(
                dict(id=i, job_id=i, number=1, state=job_state, resources=["cpu-0"], run_dir=f"/nowhere/job-{i}",
                     started_at=submitted, ended_at=now, last_step=last, total_steps=last, metrics_offset=0,
                     adopted=False, cuda_visible_devices="")
            )  # fmt: skip
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def record(kind: str, step: int, **data: Any) -> dict[str, Any]:
        body = {"kind": kind, "timestamp": stamp, "current_steps": step, "total_steps": records_of_last, **data}
        return dict(job_id=jobs, attempt_id=jobs, kind=kind, step=step, data=body, superseded=False)

    metric_rows = [record("start", 0)] if records_of_last else []
    metric_rows += [record("metric", s, loss=loss_at(s), lr=1e-4) for s in range(1, records_of_last + 1)]
    if records_of_last:
        metric_rows.append(record("end", records_of_last, status="succeeded"))
    with engine.begin() as connection:
        for table, rows in ((Job, job_rows), (Attempt, attempt_rows), (MetricRecord, metric_rows)):
            if rows:
                connection.execute(table.__table__.insert(), rows)  # type: ignore[attr-defined]
    engine.dispose()
