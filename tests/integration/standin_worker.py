"""A stand-in worker for daemon tests that need a worker's reports, not its training: `python -m
tests.integration.standin_worker RUN_DIR` (FTQ_WORKER_MODULE, with the repo on PYTHONPATH).

It passes the start gate as the real worker does, then writes a `start` record and a `metric`
record every STANDIN_STEP_S seconds for the spec's max_steps, then `end`. A job named
`garbage-*` reports what no real worker should: a total_steps beyond int64, NaN and infinite
losses, a line that is not JSON, a record of an unknown kind, a giant record. A job named `metered-*`
also reports what a GPU worker does in each metric record: throughput (tokens/s) and vram_reserved.
A job named `burst-*` writes its max_steps records as fast as it can (after the file `release-burst` appears
in its run dir, when its name holds `-held`); one named `longline-*` writes a 5 MiB line among its records.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO

from worker.spec.gate import pass_gate, refuse_to_start
from worker.spec.records import append_record, make_record

STEP_S = float(os.environ.get("STANDIN_STEP_S", "0.05"))


def main(run_dir: Path) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not pass_gate(run_dir):
        return refuse_to_start(run_dir)
    spec = json.loads((run_dir / "spec.json").read_text())
    steps = max(int(spec.get("max_steps", 10)), 1)
    if spec.get("name", "").startswith("burst"):
        return burst(run_dir, steps, held="-held" in spec["name"])
    garbage = spec.get("name", "").startswith("garbage")
    metered = {"throughput": 1000.0, "vram_reserved": 1.5} if spec.get("name", "").startswith("metered") else {}
    metrics = run_dir / "metrics.jsonl"
    total = steps
    start_total = 2**63 if garbage else steps  # what overflowed SQLite's INTEGER on every tick, before
    append_record(metrics, "start", current_steps=0, total_steps=start_total, pid=os.getpid(), world_size=1)
    for step in range(1, steps + 1):
        time.sleep(STEP_S)
        loss = (float("nan") if step % 2 else float("inf")) if garbage else 1.0 / step
        with metrics.open("a") as f:
            record = {"kind": "metric", "current_steps": step, "total_steps": total, "loss": loss, **metered}
            f.write(json.dumps(record) + "\n")
            if garbage and step == 1:
                f.write("this line is not JSON\n")
                f.write(json.dumps({"kind": "telemetry", "current_steps": 2**70}) + "\n")
                f.write(json.dumps({"kind": "metric", "current_steps": 1, "blob": "x" * 100_000}) + "\n")
            if step == steps // 2 and spec.get("name", "").startswith("longline"):
                long_line(f)
    append_record(metrics, "end", status="succeeded", current_steps=steps, total_steps=total, final_loss=0.5)
    return 0


def burst(run_dir: Path, steps: int, held: bool) -> int:
    """`steps` records as real ones look (about 150 bytes each), written as fast as the file takes them."""
    metrics = run_dir / "metrics.jsonl"
    append_record(metrics, "start", current_steps=0, total_steps=steps, pid=os.getpid(), world_size=1)
    while held and not (run_dir / "release-burst").exists():
        time.sleep(0.05)
    with metrics.open("a") as f:
        for step in range(1, steps + 1):
            record = make_record(
                "metric",
                {"current_steps": step, "total_steps": steps, "loss": 1.0 / step, "lr": 5e-5, "epoch": step / 1000},
            )
            f.write(json.dumps(record) + "\n")
    append_record(metrics, "end", status="succeeded", current_steps=steps, total_steps=steps, final_loss=0.5)
    return 0


def long_line(f: IO[str]) -> None:
    """A 5 MiB line: longer than a record may be, and than one read of the file."""
    f.write(json.dumps({"kind": "metric", "blob": "y" * (5 << 20)}) + "\n")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
