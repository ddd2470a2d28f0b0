"""The launcher's processes: torchrun started in a group of its own that dies with the launcher, cancels passed on.

The processes: launcher (the daemon's process group) -> torchrun (a group of its
own, so that a cancel reaches it once, from here; two SIGTERMs would cut its
shutdown of the ranks short) -> ranks (torchrun gives each a session of its own).
Each one dies with its parent (PR_SET_PDEATHSIG), so the daemon's SIGKILL of the
launcher's group still takes every rank with it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have Linux send `sig` to this process when its parent dies (PR_SET_PDEATHSIG); False where it cannot."""
    libc = _libc()
    return libc is not None and libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


@functools.cache
def _libc() -> Any:
    """libc with prctl, loaded once (and before a fork, so that the child only calls it); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl  # noqa: B018 - fails here rather than in a forked child
    except (OSError, AttributeError):
        return None
    return libc


def start_torchrun(argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start torchrun in a process group of its own that dies with this launcher, its output piped to us."""
    launcher_pid = os.getpid()
    _libc()  # load it here, not in the forked child

    def own_group_dying_with_us() -> None:  # runs in the child between fork and exec
        os.setpgid(0, 0)
        die_with_parent(signal.SIGKILL)
        if os.getppid() != launcher_pid:  # the launcher died before the line above took effect
            os._exit(1)

    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=own_group_dying_with_us,  # safe here: the launcher has started no threads
        close_fds=True,
    )


class Forwarder:
    """SIGTERM / SIGINT handler: pass a cancel on to torchrun once; a second one insists with SIGKILL."""

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.proc: subprocess.Popen | None = None

    @property
    def requested(self) -> bool:
        return self.received > 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.received += 1
        self._forward()

    def attach(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._forward()  # a signal that came while torchrun was being started

    def _forward(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        while self.sent < min(self.received, 2):
            # torchrun passes SIGTERM on to every rank and waits for them; SIGKILL ends it at once,
            # and the ranks with it (they die with their parent).
            sig = signal.SIGTERM if self.sent == 0 else signal.SIGKILL
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.sent += 1


def copy_lines(stream: IO[bytes], keep: int) -> str:
    """Copy torchrun's output to ours (RUN_DIR/worker.log under the daemon); return its last `keep` lines."""
    tail: deque[bytes] = deque(maxlen=keep)
    out = sys.stdout.buffer
    for line in iter(stream.readline, b""):
        tail.append(line)
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):  # nobody reads our output any more; torchrun's must still be drained
            pass
    return b"".join(tail).decode("utf-8", "replace")
