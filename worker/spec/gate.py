"""The start gate: a worker trains only once the daemon has recorded who it is.

The daemon starts `python -m worker RUN_DIR` with FTQ_START_GATE=stdin and a pipe
on stdin, stores the worker's pid and start time in the database, and only then
writes "go". So no instant of a daemon crash leaves a worker that trains unseen:
until the go, the database may not know the worker, but the worker has done
nothing; a daemon that dies before the go closes the pipe, and the worker, reading
end-of-file instead, leaves a `not_started` end record and exits. It writes its
pid into RUN_DIR/worker.pid first, so that the next daemon can find it even then.

No torch here: the gate opens before the slow imports.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from worker.spec.exits import EXIT_NOT_STARTED
from worker.spec.layout import METRICS_FILE, PID_FILE, pid_file
from worker.spec.process import read_stat
from worker.spec.records import append_record

GATE_ENV = "FTQ_START_GATE"
GO = b"go"
NOT_STARTED = "the daemon that started this worker stopped before it told it to go; nothing was trained"


def pass_gate(run_dir: Path, env: MutableMapping[str, str] = os.environ) -> bool:
    """Wait for the daemon's go when it asked for the gate; False when the daemon went away first.

    The variable is taken out of the environment, so that the processes this worker starts
    (torchrun and its ranks) do not wait for a go of their own.
    """
    if env.pop(GATE_ENV, None) != "stdin":
        return True
    write_pid_file(run_dir, pid_file_name(env))
    return sys.stdin.buffer.readline().strip() == GO


def refuse_to_start(run_dir: Path) -> int:
    """What a worker whose daemon went away before the go does: say so in its records, and exit."""
    append_record(run_dir / METRICS_FILE, "end", status="not_started", error=NOT_STARTED, current_steps=0)
    print(f"worker: {NOT_STARTED}", file=sys.stderr)
    return EXIT_NOT_STARTED


def pid_file_name(env: Mapping[str, str] = os.environ) -> str:
    """worker.pid, or worker.node{R}.pid for node rank R > 0 of a job across nodes (their run dir is shared)."""
    rank = env.get("FTQ_NODE_RANK", "").strip()  # read as worker.launch.nodes.claimed_node_rank reads it
    return pid_file(int(rank) if rank.isdigit() else 0)


def write_pid_file(run_dir: Path, name: str = PID_FILE) -> None:
    """RUN_DIR/worker.pid: this process's pid and kernel start time, written whole (a rename) or not at all."""
    pid = os.getpid()
    partial = run_dir / f".{name}.{pid}.{os.urandom(4).hex()}"  # two nodes' workers may share a pid
    partial.write_text(json.dumps({"pid": pid, "start_time": own_start_time()}))
    partial.replace(run_dir / name)


def read_pid_file(run_dir: Path, name: str = PID_FILE) -> tuple[int, int | None] | None:
    """(pid, start time) from RUN_DIR/worker.pid, or None when there is none that can be read."""
    try:
        found = json.loads((run_dir / name).read_text(encoding="utf-8"))
        return int(found["pid"]), (None if found.get("start_time") is None else int(found["start_time"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def own_start_time() -> int | None:
    """This process's start time in clock ticks (proc(5), field 22), as the daemon reads it for any pid."""
    stat = read_stat("self")
    return None if stat is None else stat.start_time
