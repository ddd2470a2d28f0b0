"""A worker's log with a cap: its output goes through a pipe to a thread that writes worker.log, and when that
reaches half the cap it becomes worker.log.1 (replacing the older one) and a new worker.log begins.

The daemon opens RUN_DIR/worker.log and hands it to the worker as stdout and stderr. The first thing
`python -m worker` does is `cap_output`: fds 1 and 2 become a pipe's writing end (inherited by everything the
worker starts: torchrun, its ranks, data loader workers, C code that writes to fd 2) and a thread of the worker
copies the pipe into the log, rotating it. A torchrun rank comes through here too, with its stdout and stderr
in two files of torchrun's (ranks/.../stdout.log, stderr.log): each gets a pipe and a cap of its own. The cap
holds without the daemon (it may be down for hours while a worker prints), the newest output is kept (at least
half the cap of it), and the two files never hold more than the cap (`FTQ_WORKER_LOG_MAX_BYTES`, passed in the
worker's environment).

Our own and not logging.handlers.RotatingFileHandler: that one rotates the records of Python's logging, and a
worker's log is every byte written to its fds 1 and 2 by anything in its process tree. Not copytruncate from
the daemon either: it would hold only while the daemon runs, and bytes written between the copy and the
truncation are lost.

At exit the worker closes its ends of the pipe and waits (at most a few seconds) for the thread to write what
is left, so the daemon, which reads the log's tail once the worker has ended, finds its last lines. What a
process killed outright (SIGKILL, a segfault) had written into the pipe and the thread had not yet copied is
lost: the thread copies as soon as bytes arrive, so that is at most one pipe's buffer (64 KiB), usually nothing.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from worker.spec.layout import DEFAULT_LOG_MAX_BYTES, LOG_MAX_BYTES_ENV, older_log

_READ = 1 << 16
_DRAIN_AT_EXIT_S = 5.0  # a child that outlives the worker and keeps the pipe open must not hold its exit


class CappedLog:
    """Appends to `path`; once it holds `max_bytes // 2`, renames it to path.1 and starts it again."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.older = path, path.with_name(older_log(path.name))
        self.half = max(max_bytes // 2, 1)
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open for the worker's life
        self.size = self._file.tell()

    def write(self, data: bytes) -> None:
        while data:
            room = self.half - self.size
            if len(data) <= room:
                self._put(data)
                return
            # What fits, cut after its last newline when it has one (a line stays in one file), then rotate.
            newline = data.rfind(b"\n", 0, max(room, 0))
            cut = newline + 1 if newline >= 0 else max(room, 0)
            self._put(data[:cut])
            data = data[cut:]
            self.rotate()

    def rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.older)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self.size = 0

    def drain(self, read_fd: int) -> None:
        """Copy the pipe into the log until every writer has closed it."""
        try:
            while data := os.read(read_fd, _READ):
                try:
                    self.write(data)
                except OSError:  # a full disk: keep draining, so the worker never blocks on its own output
                    pass
        finally:
            os.close(read_fd)
            self._file.close()

    def _put(self, data: bytes) -> None:
        if data:
            self._file.write(data)
            self.size += len(data)


def log_max_bytes(env: Mapping[str, str]) -> int:
    """The cap the daemon set (FTQ_WORKER_LOG_MAX_BYTES), or the default; a value that is not a positive whole
    number of bytes is the default too (the daemon's setting is validated where it is set)."""
    value = env.get(LOG_MAX_BYTES_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_LOG_MAX_BYTES


def fd_file(fd: int) -> Path | None:
    """The regular file `fd` writes to (the log the daemon opened, or a rank's file under torchrun), or None: a
    terminal, a pipe, no /proc."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.isfile(f"/proc/self/fd/{fd}") else None
    except OSError:
        return None


def cap_output(max_bytes: int, path: Path | None = None) -> list[threading.Thread]:
    """Send this process' fds 1 and 2 (and its children's) through a CappedLog each of the file it writes to:
    one log when both write to the same file (the worker: the daemon gives it worker.log for both), two when they
    differ (a torchrun rank: its stdout.log and stderr.log stay apart, each capped). `path`: one log for both.
    An fd that writes to no regular file is left as it is; no thread when neither does."""
    out, err = (path, path) if path is not None else (fd_file(1), fd_file(2))
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    groups: dict[Path, list[int]] = {}
    for fd, file in ((1, out), (2, err)):
        if file is not None:
            groups.setdefault(file, []).append(fd)
    threads = [_capped(file, fds, max_bytes) for file, fds in groups.items()]
    if threads:
        atexit.register(finish, threads)
    return threads


def _capped(path: Path, fds: list[int], max_bytes: int) -> threading.Thread:
    log = CappedLog(path, max_bytes)
    read_fd, write_fd = os.pipe()  # both not inheritable; the copies on `fds` are
    for fd in fds:
        os.dup2(write_fd, fd)
    os.close(write_fd)
    thread = threading.Thread(target=log.drain, args=(read_fd,), name="ftq-log-cap", daemon=True)
    thread.start()
    return thread


def finish(threads: list[threading.Thread], timeout: float = _DRAIN_AT_EXIT_S) -> None:
    """At exit: close our writing ends of the pipes and let the threads copy what is left."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
