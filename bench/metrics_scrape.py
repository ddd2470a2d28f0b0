"""What a Prometheus scrape of GET /metrics costs with 10,000 jobs in the database.

    .venv/bin/python -m bench.metrics_scrape [--jobs 10000] [--recent 500] [--records 20] [--scrapes 40]

The database is filled first, straight through the tables (as years of use would leave it): `--jobs` ended
jobs, each with one attempt, `--records` records and their events, `--recent` of them ended in the last hour
(they stay in the per-job series), the rest days ago. Then a real daemon (bench.api_load's: `ftq serve`,
8 fake 80 GiB GPUs, stand-in workers writing 20 records a second) starts on it, runs 8 streaming jobs and
holds 100 more queued behind them, and GET /metrics is scraped `--scrapes` times in a row: latency p50 and
p99, the daemon's CPU time per scrape, the size of the answer and its number of series.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.api_load import Daemon, _percentile, _wait, job_spec
from server.db.engine import make_engine, upgrade_database
from server.db.models import Attempt, Event, Job, MetricRecord
from server.settings import Settings

OUTCOMES = ("succeeded", "succeeded", "succeeded", "failed", "oom", "cancelled")


def fill(data_dir: Path, jobs: int, recent: int, records: int) -> None:
    """`jobs` ended jobs with an attempt, records and events each, in a few large inserts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(Settings(data_dir=data_dir))
    upgrade_database(engine)
    now = datetime.now(timezone.utc)
    job_rows: list[dict[str, Any]] = []
    attempt_rows: list[dict[str, Any]] = []
    metric_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    for i in range(1, jobs + 1):
        ended = now - (timedelta(minutes=i % 60) if i <= recent else timedelta(days=1 + i % 30, minutes=i % 60))
        started = ended - timedelta(minutes=20)
        submitted = started - timedelta(seconds=i % 900)
        state = OUTCOMES[i % len(OUTCOMES)]
        job_rows.append(
            dict(id=i, name=f"old-{i}", state=state, priority=0, gpus=1, spec=job_spec(f"old-{i}"),
                 submitted_at=submitted, started_at=started, ended_at=ended, oom_retries=0, tried=[])
        )  # fmt: skip
        attempt_rows.append(
            dict(id=i, job_id=i, number=1, state=state, resources=[f"GPU-{i % 8}"], run_dir=f"/nowhere/job-{i}",
                 started_at=started, ended_at=ended, last_step=records - 2, total_steps=records - 2,
                 peak_memory_gib=12.5, metrics_offset=0, adopted=False, last_record_at=ended, record_interval_s=1.0)
        )  # fmt: skip
        stamp = started.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for step in range(records):
            kind = "start" if step == 0 else "end" if step == records - 1 else "metric"
            data = {"kind": kind, "timestamp": stamp, "current_steps": step, "total_steps": records - 2, "loss": 1.0}
            metric_rows.append(dict(job_id=i, attempt_id=i, kind=kind, step=step, data=data, superseded=False))
            event_rows.append(dict(job_id=i, kind=kind, data={"job_id": i, "attempt": 1, "record": data}))
        for s in ("queued", "starting", "running", state):
            event_rows.append(dict(job_id=i, kind="state", data={"job_id": i, "state": s, "at": stamp}))
    with engine.begin() as connection:
        for table, rows in ((Job, job_rows), (Attempt, attempt_rows), (MetricRecord, metric_rows), (Event, event_rows)):
            connection.execute(table.__table__.insert(), rows)  # type: ignore[attr-defined]
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000, help="ended jobs already in the database")
    parser.add_argument("--recent", type=int, default=500, help="of them, ended in the last hour")
    parser.add_argument("--records", type=int, default=20, help="records (and record events) per ended job")
    parser.add_argument("--scrapes", type=int, default=40)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ftq-metrics-scrape-"))
    began = time.monotonic()
    fill(workdir / "ftq", args.jobs, args.recent, args.records)
    print(f"filled: {args.jobs} jobs, {args.jobs * args.records} records in {time.monotonic() - began:.1f} s")
    daemon = Daemon(workdir, 20.0)
    try:
        streams = [daemon.submit(f"stream-{i}") for i in range(8)]
        _wait(lambda: all(daemon.job(i)["state"] == "running" for i in streams), 60, "the streams to run")
        for i in range(100):  # eight GPUs each: they wait behind the streams
            daemon.http.post("/jobs", json={**job_spec(f"queued-{i}"), "gpus": 8}).raise_for_status()
        daemon.http.get("/metrics").raise_for_status()  # warm up
        times, cpu_before = [], daemon.cpu_s()
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            response = daemon.http.get("/metrics")
            times.append(1000 * (time.perf_counter() - t0))
            response.raise_for_status()
        cpu_after = daemon.cpu_s()
        series = sum(len(f.samples) for f in text_string_to_metric_families(response.text))
        per_job = sum(
            len(f.samples) for f in text_string_to_metric_families(response.text) if f.name.startswith("ftq_job_")
        )
        cpu = f"{1000 * (cpu_after - cpu_before) / args.scrapes:.1f} ms" if cpu_before and cpu_after else "n/a"
        print(
            f"daemon: {args.jobs + 108} jobs ({args.recent} ended in the last hour, 8 running, 100 queued), "
            f"{os.cpu_count()} CPUs\n"
            f"GET /metrics x{args.scrapes}: p50 {statistics.median(times):.1f} ms, "
            f"p99 {_percentile(times, 99):.1f} ms, "
            f"daemon CPU/scrape {cpu} (its scheduler's included), {len(response.content) / 1024:.0f} KiB, "
            f"{series} samples ({per_job} per-job)"
        )
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
