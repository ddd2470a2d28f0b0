"""A stand-in worker for benchmarks: streams metric records at a steady rate instead of training.

`python -m bench.stream_worker RUN_DIR`, run by the daemon (FTQ_WORKER_MODULE) like the
real worker: a `start` record, then `metric` records at BENCH_RECORDS_PER_S (default 20)
in the real worker's format (worker.spec.records), until it is cancelled (SIGTERM: an `end`
record saying so, exit 143, as the real worker), its daemon goes away, or BENCH_STREAM_S
(default 900) pass, whichever comes first: a benchmark that dies leaves nothing running.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

from worker.spec.exits import EXIT_CANCELLED
from worker.spec.layout import METRICS_FILE
from worker.spec.records import MetricsSink, hms


def main(run_dir: Path) -> int:
    rate = float(os.environ.get("BENCH_RECORDS_PER_S", "20"))
    lasts = float(os.environ.get("BENCH_STREAM_S", "900"))
    total = max(1, int(rate * lasts))
    stop = {"asked": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
    parent = os.getppid()
    sink = MetricsSink(run_dir / METRICS_FILE)
    sink.write(
        "start",
        current_steps=0,
        total_steps=total,
        pid=os.getpid(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        device="stream",
        world_size=1,
    )
    began = time.monotonic()
    step = 0
    while step < total and not stop["asked"] and os.getppid() == parent:
        step += 1
        elapsed = time.monotonic() - began
        sink.write(
            "metric",
            current_steps=step,
            total_steps=total,
            loss=round(2.0 * math.exp(-step / 2000) + 0.3, 4),
            lr=5e-5,
            epoch=round(step / total, 4),
            percentage=round(100 * step / total, 2),
            elapsed_time=hms(elapsed),
            remaining_time=hms(elapsed / step * (total - step)),
            throughput=2048.0,
            total_tokens=step * 1024,
        )
        time.sleep(max(0.0, began + step / rate - time.monotonic()))
    if stop["asked"]:
        sink.write("end", status="cancelled", current_steps=step, total_steps=total, error="cancelled (SIGTERM)")
        sink.close()
        return EXIT_CANCELLED
    sink.write("end", status="succeeded", current_steps=step, total_steps=total, final_loss=0.3)
    sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
