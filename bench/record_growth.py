"""How much the database grows per stored record, and how fast records are stored.

    .venv/bin/python -m bench.record_growth [--records 20000] [--chunk-records 5000]

Writes `--records` metric records, as the real worker writes them (worker.outputs.sink: kind, timestamp,
steps, loss, lr, epoch, percentage, times, throughput, tokens, grad norm, VRAM), into a metrics.jsonl, and
stores them through the real ingest path on a fresh SQLite database migrated by Alembic: the loop's bounded
read (scheduler.local.tail.read_records) and the store's transaction (SqlStore.add_records_of: the metrics
rows, their events, the attempt's offset). Then it prints the bytes each table and index holds per record
(SQLite's dbstat), and the records stored a second, for the default read bound and, in the same process as a
baseline, for one read of the whole file in one transaction (what a pass cost before reads were bounded).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from sqlmodel import Session

from scheduler.local.tail import CHUNK_RECORDS, read_records
from scheduler.policy.states import JobState
from server.db.engine import make_engine, upgrade_database
from server.db.models import Attempt, Job
from server.db.store import SqlStore
from server.settings import Settings
from worker.spec.records import hms, make_record


def write_records(path: Path, count: int) -> int:
    """`count` metric records as a GPU worker writes them; the file's size."""
    with path.open("w", encoding="utf-8") as f:
        for step in range(1, count + 1):
            record = make_record(
                "metric",
                dict(
                    current_steps=step, total_steps=count, loss=2 / (1 + step / 100), lr=4.99e-05 * (1 - step / count),
                    epoch=round(step / 1000, 4), percentage=round(100 * step / count, 2), elapsed_time=hms(step),
                    remaining_time=hms(count - step), throughput=4123.45, total_tokens=step * 2048,
                    grad_norm=0.8731, vram_allocated=10.42, vram_reserved=12.5,
                ),
            )  # fmt: skip
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path.stat().st_size


def new_store(data_dir: Path) -> tuple[SqlStore, int]:
    """A migrated database with one running job and its attempt; (store, attempt id)."""
    engine = make_engine(Settings(data_dir=data_dir))
    upgrade_database(engine)
    with Session(engine) as session:
        job = Job(name="growth", state=JobState.RUNNING.value, gpus=0, spec={"name": "growth"})
        session.add(job)
        session.flush()
        assert job.id is not None
        attempt = Attempt(job_id=job.id, number=1, state=JobState.RUNNING.value, run_dir=str(data_dir))
        session.add(attempt)
        session.commit()
        assert attempt.id is not None
        return SqlStore(engine), attempt.id


def ingest(store: SqlStore, attempt_id: int, path: Path, max_bytes: int, max_records: int) -> tuple[int, float, int]:
    """Store the file's records as the loop does, one bounded read a transaction: (records, seconds, passes)."""
    offset, stored, passes = 0, 0, 0
    started = time.perf_counter()
    while True:
        read = read_records(path, offset, max_bytes=max_bytes, max_records=max_records)
        if read.records:
            store.add_records_of([(attempt_id, read.records, read.offset)])
            stored += len(read.records)
            passes += 1
        offset = read.offset
        if not read.more:
            return stored, time.perf_counter() - started, passes


def table_bytes(database: Path) -> dict[str, int]:
    """Bytes of each table and index (their pages, as SQLite's dbstat counts them)."""
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = connection.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    return {str(name): int(size) for name, size in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--chunk-records", type=int, default=CHUNK_RECORDS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        metrics = root / "metrics.jsonl"
        file_size = write_records(metrics, args.records)
        rates = {}
        for label, max_bytes, max_records in (
            (f"bounded ({args.chunk_records} records a pass)", 1 << 20, args.chunk_records),
            ("baseline: the whole file in one pass", file_size + (1 << 20), args.records + 1),
        ):
            data_dir = root / f"data-{len(rates)}"
            data_dir.mkdir()
            store, attempt_id = new_store(data_dir)
            before = table_bytes(data_dir / "ftq.db")
            stored, seconds, passes = ingest(store, attempt_id, metrics, max_bytes, max_records)
            assert stored == args.records, (stored, args.records)
            after = table_bytes(data_dir / "ftq.db")
            rates[label] = (stored / seconds, seconds / passes)
        print(f"{args.records} records, {file_size / args.records:.0f} bytes a line in metrics.jsonl\n")
        print(f"{'table or index':34} {'bytes':>12} {'per record':>11}")
        grown = {name: after[name] - before.get(name, 0) for name in after}
        for name, size in sorted(grown.items(), key=lambda item: -item[1]):
            if size > 0:
                print(f"{name:34} {size:12,} {size / args.records:11.0f}")
        total = sum(grown.values())
        print(f"{'all':34} {total:12,} {total / args.records:11.0f}\n")
        events = sum(s for n, s in grown.items() if "events" in n)
        metric_rows = sum(s for n, s in grown.items() if "metrics" in n)
        print(f"events / metrics bytes: {events / metric_rows:.2f}\n")
        print(f"{'ingest':40} {'records/s':>10} {'s a pass':>9}")
        for label, (rate, per_pass) in rates.items():
            print(f"{label:40} {rate:10.0f} {per_pass:9.3f}")
        bounded, baseline = rates.values()
        print(f"\nbounded / baseline records/s: {bounded[0] / baseline[0]:.2f}")


if __name__ == "__main__":
    main()
