"""A worker that prints far more than its log may hold: `python -m tests.integration.chatty_worker RUN_DIR`
(FTQ_WORKER_MODULE, with the repo on PYTHONPATH).

It caps its output first, as `python -m worker` does (worker.outputs.log_cap, with the cap the daemon put in its
environment), passes the start gate, writes a `start` record, prints `max_steps` MiB of numbered lines as fast
as it can, then its last words, and fails (exit 1, no `end` record): the job's failure must quote those words.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from worker.outputs.log_cap import cap_output, log_max_bytes
from worker.spec.gate import pass_gate, refuse_to_start
from worker.spec.records import append_record

LINE = 64  # bytes a numbered line takes, newline included
LAST_WORDS = ("ChattyError: printed everything", "and these are the last words")


def lines(first: int, count: int) -> bytes:
    return b"".join(b"line %010d " % n + b"x" * (LINE - 17) + b"\n" for n in range(first, first + count))


def main(run_dir: Path) -> int:
    if not pass_gate(run_dir):
        return refuse_to_start(run_dir)
    spec = json.loads((run_dir / "spec.json").read_text())
    append_record(run_dir / "metrics.jsonl", "start", current_steps=0, total_steps=1, pid=os.getpid(), world_size=1)
    per_write = (1 << 20) // LINE
    out = sys.stdout.buffer
    for block in range(int(spec.get("max_steps", 1))):
        out.write(lines(block * per_write, per_write))
    out.write(("\n".join(LAST_WORDS) + "\n").encode())
    out.flush()
    return 1


if __name__ == "__main__":
    cap_output(log_max_bytes(os.environ))
    sys.exit(main(Path(sys.argv[1])))
