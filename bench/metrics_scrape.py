"""What a Prometheus scrape of GET /metrics, and a read of GET /gpus, cost with 10,000 ended and 20,000 queued jobs.

    .venv/bin/python -m bench.metrics_scrape [--jobs 10000] [--recent 500] [--queued 20000] [--records 20]
                                             [--scrapes 20] [--baseline PATH]

The database is filled first, straight through the tables (as years of use would leave it): `--jobs` ended
jobs, each with one attempt, `--records` records and their events, `--recent` of them ended in the last hour,
the rest days ago. Then a real daemon (`ftq serve`, 8 fake 80 GiB GPUs, bench.stream_worker writing 20
records a second) starts on it and runs 8 streaming jobs; GET /metrics and GET /gpus are each read
`--scrapes` times in a row, then `--queued` jobs of eight GPUs each are queued behind the streams (one
submitted through the API, the rest its copies, with their queue events, written to the tables) and both are
read again. Figures: latency p50 and p99, the daemon's CPU time per request, the answer's size and samples.

`--baseline PATH` runs the same against a daemon started from another checkout of ftq (e.g. a worktree of
the commit before: `git worktree add /tmp/ftq-before HEAD~1`) on a copy of the same filled database, first,
and prints its rows above this checkout's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from bench.api_load import MACHINE, REPO, TERMINAL, Daemon, _percentile, _wait, job_spec
from server.db.engine import make_engine, upgrade_database
from server.db.models import Attempt, Event, Job, MetricRecord
from server.db.store import SqlStore
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


class TreeDaemon(Daemon):
    """bench.api_load's daemon, started from the checkout at `repo` (its code, its configs)."""

    def __init__(self, workdir: Path, repo: Path, rate: float = 20.0) -> None:
        super().__init__(workdir, rate, repo=repo, timeout=120)

    def stop_streams(self, streams: list[int]) -> None:
        """Cancel the streams (not the thousands queued: GET /jobs pages), then stop the daemon."""
        try:
            for job_id in streams:
                self.http.post(f"/jobs/{job_id}/cancel")
            _wait(lambda: all(self.job(i)["state"] in TERMINAL for i in streams), 30, "the streams to end")
        finally:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def queue_copies(data_dir: Path, template_id: int, count: int) -> None:
    """`count` more queued jobs like `template_id` (submitted through the API), each with its queue event."""
    engine = make_engine(Settings(data_dir=data_dir))
    with Session(engine) as session:
        template = session.get(Job, template_id)
        assert template is not None and template.state == "queued", template
        row = template.model_dump(exclude={"id"})
    now = datetime.now(timezone.utc)
    first = template_id + 1
    jobs = [{**row, "id": first + i, "name": f"queued-{i}", "submitted_at": now} for i in range(count)]
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events = [
        dict(job_id=job["id"], kind="state", data={"job_id": job["id"], "name": job["name"], "state": "queued",
                                                   "reason": None, "at": stamp})
        for job in jobs
    ]  # fmt: skip
    with engine.begin() as connection:
        connection.execute(Job.__table__.insert(), jobs)  # type: ignore[attr-defined]
        connection.execute(Event.__table__.insert(), events)  # type: ignore[attr-defined]
    engine.dispose()


@dataclass
class Row:
    code: str
    queued: int
    route: str
    p50: float
    p99: float
    cpu_ms: float | None
    kib: float
    samples: str


def read_route(daemon: TreeDaemon, route: str, times: int, code: str, queued: int) -> Row:
    try:
        daemon.http.get(route).raise_for_status()  # warm up (the first /metrics reads every job's waits)
    except httpx.TimeoutException:
        return Row(code, queued, f"GET {route}", float("inf"), float("inf"), None, 0, "no answer in 120 s")
    took, cpu_before = [], daemon.cpu_s()
    for _ in range(times):
        t0 = time.perf_counter()
        response = daemon.http.get(route)
        took.append(1000 * (time.perf_counter() - t0))
        response.raise_for_status()
    cpu_after = daemon.cpu_s()
    cpu = 1000 * (cpu_after - cpu_before) / times if cpu_before is not None and cpu_after is not None else None
    samples = ""
    if route == "/metrics":
        found = list(text_string_to_metric_families(response.text))
        per_job = sum(len(f.samples) for f in found if f.name.startswith("ftq_job_"))
        samples = f"{sum(len(f.samples) for f in found):,} ({per_job:,} per-job)"
    p50, p99 = statistics.median(took), _percentile(took, 99)
    return Row(code, queued, f"GET {route}", p50, p99, cpu, len(response.content) / 1024, samples)


def queue_read(data_dir: Path, code: str, queued: int) -> Row:
    """What the scheduler's placement pass reads on each tick (server.db.store.SqlStore.queued_jobs: every
    queued job), timed in this process: the work that competes with every request for the daemon's GIL."""
    engine = make_engine(Settings(data_dir=data_dir))
    store = SqlStore(engine)
    took = []
    for _ in range(5):
        t0 = time.perf_counter()
        store.queued_jobs()
        took.append(1000 * (time.perf_counter() - t0))
    engine.dispose()
    return Row(code, queued, "scheduler: queued_jobs()", statistics.median(took), max(took), None, 0, "")


def scrape_in_process(data_dir: Path, code: str, queued: int, times: int) -> Row:
    """This checkout's GET /metrics collector on the same database, in this process: the scrape's own cost,
    without HTTP and without the daemon's scheduler competing for its interpreter (no workers: no GPU holders)."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from scheduler.contract import Health
    from scheduler.gpus.cache import RecentProbe
    from scheduler.gpus.fake import FakeProbe
    from server.metrics.prometheus import make_registry

    settings = Settings(data_dir=data_dir)
    engine = make_engine(settings)
    loop = SimpleNamespace(health=Health(), live_pids=dict)
    state = SimpleNamespace(settings=settings, loop=loop, engine=engine, probe=RecentProbe(FakeProbe(MACHINE), 1.0))
    registry = make_registry(state, "bench")
    generate_latest(registry)  # the first reads every job's waits and ends
    took = []
    for _ in range(times):
        t0 = time.perf_counter()
        text = generate_latest(registry)
        took.append(1000 * (time.perf_counter() - t0))
    engine.dispose()
    samples = sum(len(f.samples) for f in text_string_to_metric_families(text.decode()))
    p50, p99 = statistics.median(took), _percentile(took, 99)
    return Row(code, queued, "in-process collect", p50, p99, None, len(text) / 1024, f"{samples:,}")


def run_tree(filled: Path, repo: Path, code: str, args: argparse.Namespace) -> list[Row]:
    """Both routes at 0 and at `--queued` queued jobs, on a copy of the filled data dir, with `repo`'s daemon."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ftq-metrics-{code}-"))
    shutil.copytree(filled, workdir / "ftq")
    daemon = TreeDaemon(workdir, repo)
    rows: list[Row] = []
    streams: list[int] = []
    try:
        streams = [daemon.submit(f"stream-{i}") for i in range(8)]
        _wait(lambda: all(daemon.job(i)["state"] == "running" for i in streams), 60, "the streams to run")
        for route in ("/metrics", "/gpus"):
            rows.append(read_route(daemon, route, args.scrapes, code, 0))
        template = daemon.http.post("/jobs", json={**job_spec("queued"), "gpus": 8}).raise_for_status().json()["id"]
        queue_copies(workdir / "ftq", template, args.queued - 1)
        for route in ("/metrics", "/gpus"):
            rows.append(read_route(daemon, route, args.scrapes, code, args.queued))
        rows.append(queue_read(workdir / "ftq", code, args.queued))
        if repo == REPO:
            rows.append(scrape_in_process(workdir / "ftq", code, args.queued, args.scrapes))
    finally:
        daemon.stop_streams(streams)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value != float("inf") else "> 120 s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000, help="ended jobs already in the database")
    parser.add_argument("--recent", type=int, default=500, help="of them, ended in the last hour")
    parser.add_argument("--queued", type=int, default=20_000, help="jobs queued behind the streams, later")
    parser.add_argument("--records", type=int, default=20, help="records (and record events) per ended job")
    parser.add_argument("--scrapes", type=int, default=20, help="reads of each route at each queue length")
    parser.add_argument("--baseline", type=Path, help="another checkout of ftq, measured first the same way")
    args = parser.parse_args()
    filled = Path(tempfile.mkdtemp(prefix="ftq-metrics-filled-")) / "ftq"
    began = time.monotonic()
    fill(filled, args.jobs, args.recent, args.records)
    print(f"filled: {args.jobs} jobs, {args.jobs * args.records} records in {time.monotonic() - began:.1f} s")
    trees = [("baseline", args.baseline.resolve())] if args.baseline else []
    rows: list[Row] = []
    try:
        for code, repo in [*trees, ("this", REPO)]:
            rows += run_tree(filled, repo, code, args)
    finally:
        shutil.rmtree(filled.parent, ignore_errors=True)
    print(
        f"daemon: {args.jobs} ended jobs ({args.recent} in the last hour), 8 running (20 records/s each), "
        f"then {args.queued:,} queued; {os.cpu_count()} CPUs; {args.scrapes} reads each"
    )
    print("| code | queued | route | p50 | p99 | daemon CPU / read | answer | samples |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cpu = f"{r.cpu_ms:.1f} ms" if r.cpu_ms is not None else "n/a"
        print(
            f"| {r.code} | {r.queued:,} | `{r.route}` | {_ms(r.p50)} | {_ms(r.p99)} | {cpu} | "
            f"{r.kib:,.0f} KiB | {r.samples} |"
        )
    base = {(r.queued, r.route): r for r in rows if r.code == "baseline"}
    for r in rows:
        if r.code == "this" and (r.queued, r.route) in base:
            ratio = base[r.queued, r.route].p50 / r.p50
            print(f"{r.route} at {r.queued:,} queued: baseline p50 / this p50 = {ratio:.1f}")


if __name__ == "__main__":
    main()
