"""One daemon per data dir: an exclusive lock held for the daemon's whole life.

Two daemons on one data dir would both adopt the same workers and store every
metric twice. `flock` is released by the kernel however the holder dies
(kill -9 included), so a crash never leaves a stale lock to clean up; the pid
written into the file only names the holder in the refusal. Workers never
inherit the descriptor (close-on-exec, and the supervisor closes fds), so a
worker outliving its daemon does not keep the next one out.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "daemon.lock"


class DataDirLocked(RuntimeError):
    """Another live daemon holds the data dir; the message names its pid and what to do."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir.resolve() / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise DataDirLocked(
                f"another ftq daemon ({who}) already runs on the data dir {self.path.parent}; "
                "stop it first, or give this one its own FTQ_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
