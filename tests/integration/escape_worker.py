"""A worker for tests/integration/test_small_limits.py: passes the start gate, then fails with an error text full of
terminal escape codes (clear the screen, set the title, ring the bell), as a worker's exception text may be."""

from __future__ import annotations

import sys
from pathlib import Path

from worker.spec.exits import EXIT_FAILED
from worker.spec.gate import pass_gate, refuse_to_start
from worker.spec.records import append_record

ESCAPES = "\x1b[2J\x1b]0;pwned\x07\r"


def main(run_dir: Path) -> int:
    if not pass_gate(run_dir):
        return refuse_to_start(run_dir)
    append_record(run_dir / "metrics.jsonl", "start", current_steps=0, total_steps=1, world_size=1)
    append_record(run_dir / "metrics.jsonl", "end", status="failed", error=f"boom{ESCAPES}here")
    print(f"worker log line{ESCAPES}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
