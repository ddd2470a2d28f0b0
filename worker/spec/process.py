"""One process as /proc/PID/stat tells it: its state, parent and start time; None when it is gone.

The worker's start gate records its own start time with it, and the daemon compares a pid's
start time with the recorded one (so a reused pid is never taken for a worker) and walks
parents to find a worker's children: all three read the line the same way, here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = "/proc"


@dataclass(frozen=True)
class ProcessStat:
    """What ftq reads of /proc/PID/stat (proc(5): fields 3, 4 and 22)."""

    state: str  # R, S, D, Z (zombie), X (dead), ...
    ppid: int
    start_time: int | None  # clock ticks after boot; None where the line stops short of it


def read_stat(pid: int | str = "self", proc: str | os.PathLike[str] = PROC) -> ProcessStat | None:
    """The process's stat, or None when there is no such process (or no /proc, or a line we cannot read)."""
    try:
        stat = Path(proc, str(pid), "stat").read_bytes()
    except OSError:  # gone, hidden from us, or no /proc (macOS, Windows)
        return None
    # "pid (comm) state ppid ...": comm may hold spaces, ")" and bytes that are not UTF-8, so split after the last ")"
    fields = stat.rpartition(b")")[2].split()
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    start = fields[19] if len(fields) > 19 and fields[19].isdigit() else None  # field 22, counted from field 3
    return ProcessStat(fields[0].decode("ascii", "replace"), int(fields[1]), None if start is None else int(start))
