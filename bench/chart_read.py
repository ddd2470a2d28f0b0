"""What a job's chart costs to read as its records grow: GET /jobs/{id}/metrics?points=2000 (every record, each
curve thinned on the server) against the first 10,000 records (the answer the chart had before, the baseline).

    .venv/bin/python -m bench.chart_read [--records 10000 100000 1000000] [--points 2000] [--reads 10]

For each size a job with that many metric records (and its start and end) is written straight into a fresh
database, a real daemon (bench.api_load's) starts on it, and each read is timed `--reads` times in a row: the
median latency, the answer's size and records, the last step it reaches, and the ratio of the two latencies.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.api_load import Daemon, job_spec
from server.db.engine import make_engine, upgrade_database
from server.db.models import Attempt, Job, MetricRecord
from server.settings import Settings


def fill(data_dir: Path, records: int) -> None:
    """Job 1, succeeded, with `records` metric records between its start and end."""
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(Settings(data_dir=data_dir))
    upgrade_database(engine)
    now = datetime.now(timezone.utc)
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def row(kind: str, step: int, **data: Any) -> dict[str, Any]:
        body = {"kind": kind, "timestamp": stamp, "current_steps": step, "total_steps": records, **data}
        return dict(job_id=1, attempt_id=1, kind=kind, step=step, data=body, superseded=False)

    rows = [row("start", 0), *(row("metric", s, loss=2.0 / (1 + s / 1000), lr=1e-4) for s in range(1, records + 1))]
    rows.append(row("end", records, status="succeeded"))
    with engine.begin() as connection:
        connection.execute(
            Job.__table__.insert(),  # type: ignore[attr-defined]
            [dict(id=1, name="long", state="succeeded", priority=0, gpus=1, spec=job_spec("long"),
                  submitted_at=now, started_at=now, ended_at=now, oom_retries=0, tried=[])],
        )  # fmt: skip
        connection.execute(
            Attempt.__table__.insert(),  # type: ignore[attr-defined]
            [dict(id=1, job_id=1, number=1, state="succeeded", resources=["GPU-0"], run_dir="/nowhere",
                  started_at=now, ended_at=now, last_step=records, total_steps=records, metrics_offset=0,
                  adopted=False)],
        )  # fmt: skip
        for start in range(0, len(rows), 50_000):
            connection.execute(MetricRecord.__table__.insert(), rows[start : start + 50_000])  # type: ignore[attr-defined]
    engine.dispose()


def timed(daemon: Daemon, params: dict[str, Any], reads: int) -> tuple[float, int, int, int | None]:
    """Median ms, bytes, records and the last metric step of GET /jobs/1/metrics with `params`."""
    times = []
    for _ in range(reads):
        t0 = time.perf_counter()
        response = daemon.http.get("/jobs/1/metrics", params=params).raise_for_status()
        times.append(1000 * (time.perf_counter() - t0))
    data = response.json()["data"]
    steps = [r["current_steps"] for r in data if r["kind"] == "metric"]
    return statistics.median(times), len(response.content), len(data), steps[-1] if steps else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=10)
    args = parser.parse_args()
    print(f"{'records':>9}  {'read':<22} {'p50 ms':>8} {'KiB':>7} {'records':>8} {'last step':>9}  ratio")
    for records in args.records:
        workdir = Path(tempfile.mkdtemp(prefix="ftq-chart-read-"))
        try:
            fill(workdir / "ftq", records)
            daemon = Daemon(workdir, 1.0)
            try:
                base = timed(daemon, {"limit": 10_000}, args.reads)
                thin = timed(daemon, {"points": args.points}, args.reads)
            finally:
                daemon.stop()
            for name, (ms, size, n, last) in (("first 10,000 (before)", base), (f"points={args.points}", thin)):
                ratio = f"{ms / base[0]:.2f}x"
                print(f"{records:>9,}  {name:<22} {ms:>8.1f} {size / 1024:>7.0f} {n:>8,} {last or 0:>9,}  {ratio}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
