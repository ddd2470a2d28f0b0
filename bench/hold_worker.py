"""A stand-in worker for benchmarks: holds its GPUs for the job's traced duration instead of training.

`python -m bench.hold_worker RUN_DIR`, run by the daemon (FTQ_WORKER_MODULE) like the
real worker: it reads spec.json, looks its duration up by job name in the JSON file
named by BENCH_TRACE, and writes the same `start` and `end` records.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from worker.spec.gate import pass_gate, refuse_to_start


def record(path: Path, **fields: object) -> None:
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with path.open("a") as f:
        f.write(json.dumps({"timestamp": stamp, **fields}) + "\n")


def main(run_dir: Path) -> int:
    if not pass_gate(run_dir):  # as the real worker: nothing before the daemon has recorded this process
        return refuse_to_start(run_dir)
    spec = json.loads((run_dir / "spec.json").read_text())
    durations = json.loads(Path(os.environ["BENCH_TRACE"]).read_text())
    metrics = run_dir / "metrics.jsonl"
    record(
        metrics,
        kind="start",
        current_steps=0,
        pid=os.getpid(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        device="held",
        world_size=1,
    )
    time.sleep(durations[spec["name"]])
    record(metrics, kind="end", status="succeeded", current_steps=1, total_steps=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
