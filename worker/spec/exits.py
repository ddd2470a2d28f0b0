"""The worker's exit codes, and the one place that puts an exit code or a signal into words.

Both sides read it: the daemon decodes how a worker ended (scheduler.policy.exits),
the launcher how torchrun or one of its ranks did (worker.launch). Plain stdlib: the
start gate and the stand-in workers need the codes before, or without, the slow imports.
"""

from __future__ import annotations

import signal

# Exit codes the worker uses, so the supervisor can tell why it ended without
# parsing its log. 0 is success; anything else not listed is an unexpected crash.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_OOM = 3
EXIT_NOT_STARTED = 4  # the daemon died before it told the worker to go: nothing was trained
EXIT_CANCELLED = 143  # 128 + SIGTERM, what a shell reports for a process ended by it

# The likely cause behind a signal, for a person who reads why a worker ended (STYLE.md 5).
_SIGNAL_HINTS = {
    signal.SIGKILL: "likely the host ran out of memory (the kernel's OOM killer) or someone ran kill -9",
    signal.SIGSEGV: "a segmentation fault in native code (a CUDA or library bug)",
    signal.SIGABRT: "aborted by native code (see the log's last lines)",
    signal.SIGBUS: "a bus error (often /dev/shm too small for data loader workers)",
    signal.SIGTERM: "terminated by someone other than ftq",
    signal.SIGINT: "interrupted",
}


def signal_name(signum: int) -> str | None:
    """SIGKILL for 9; None for a number that names no signal Python knows."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return None


def describe_exit(code: int | None) -> str:
    """How a worker ended, for the daemon's reason: 'exited with code 1', 'killed by signal 9 (SIGKILL) — likely ...'.

    A shell-style code (128 + n) is decoded as the signal it stands for, and a known
    signal comes with its likely cause.
    """
    if code is None:
        return "ended with an unknown exit status"
    signum = -code if code < 0 else code - 128 if code > 128 and code - 128 < 65 else None
    name = None if signum is None else signal_name(signum)
    if signum is None or name is None:
        return f"exited with code {code}"
    how = "killed by" if code < 0 else f"exited with code {code}, i.e. 128 +"
    hint = _SIGNAL_HINTS.get(signal.Signals(signum))
    return f"{how} signal {signum} ({name})" + (f" — {hint}" if hint else "")


def describe_rank_exit(code: int) -> str:
    """How torchrun or one of its ranks ended, for the launcher's end record: 'exited with code 1', 'was killed
    by signal 9 (SIGKILL)'.

    torchrun's codes as they are (a negative one is the signal), without a guess at
    the cause: the launcher's phrase goes on with what it knows (the rank's log).
    """
    if code < 0:
        return f"was killed by signal {-code} ({signal_name(-code) or 'an unknown signal'})"
    return f"exited with code {code}"
