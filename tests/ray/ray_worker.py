"""A stand-in worker for the Ray tests: `python -m tests.ray.ray_worker RUN_DIR`, started by a node agent.

It passes the start gate as the real worker does and leaves what it was started with in
RUN_DIR/seen.rank{R}.json (the gang's FTQ_ variables, CUDA_VISIBLE_DEVICES, its pid). Node rank 0
then writes a `start` record, a `metric` record every spec `step_s` seconds for `max_steps`, and
`end`; a node rank > 0 only lives as long (its records are rank 0's, as with the real worker).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from worker.spec.gate import pass_gate, refuse_to_start
from worker.spec.records import append_record

GANG_ENV = ("FTQ_NNODES", "FTQ_NODE_RANK", "FTQ_MASTER_ADDR", "FTQ_MASTER_PORT", "CUDA_VISIBLE_DEVICES")


def main(run_dir: Path) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not pass_gate(run_dir):
        return refuse_to_start(run_dir)
    spec = json.loads((run_dir / "spec.json").read_text())
    rank = int(os.environ.get("FTQ_NODE_RANK", "0"))
    seen = {key: os.environ.get(key) for key in GANG_ENV} | {"pid": os.getpid()}
    (run_dir / f"seen.rank{rank}.json").write_text(json.dumps(seen))
    steps, step_s = int(spec.get("max_steps", 3)), float(spec.get("step_s", 0.05))
    metrics = run_dir / "metrics.jsonl"
    if rank == 0:
        append_record(metrics, "start", current_steps=0, total_steps=steps, pid=os.getpid(), world_size=1)
    for step in range(1, steps + 1):
        time.sleep(step_s)
        if rank == 0:
            append_record(metrics, "metric", current_steps=step, total_steps=steps, loss=1.0 / step)
    if rank == 0:
        append_record(metrics, "end", status="succeeded", current_steps=steps, total_steps=steps)
    print(f"rank {rank} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
