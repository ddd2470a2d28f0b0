"""Worker processes: spawn, signal, and tell whether any of a job's processes is left.

`subprocess.Popen`, never fork (CUDA and fork don't mix); each worker leads its
own session and process group, so a cancel reaches torchrun ranks and data
loader workers too, and a worker outlives a daemon that dies (STYLE.md 6).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.spec.gate import GATE_ENV, GO
from worker.spec.layout import CHECKPOINT_DIR, LOG_FILE, SPEC_FILE
from worker.spec.process import read_stat

# FTQ_FAULT injects failures (e.g. oom@step:3) into workers; only tests set it.
PASSED_TO_WORKERS = ("FTQ_FAULT",)


@dataclass
class WorkerProcess:
    """A worker this daemon started (with its Popen) or adopted from a daemon that died (without)."""

    attempt_id: int
    pid: int
    run_dir: Path
    start_time: int | None
    popen: subprocess.Popen[bytes] | None = None

    def poll(self) -> tuple[bool, int | None]:
        """(ended, exit code); the exit code of a process we did not start is not ours to know."""
        if self.popen is not None:
            code = self.popen.poll()
            return code is not None, code
        return not same_process(self.pid, self.start_time), None


def worker_env(
    cuda_visible_devices: str,
    cpu_threads: int | None,
    daemon_settings: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The worker's environment: ours, plus the GPUs it may see and nothing it may not.

    `daemon_settings`: what the daemon resolved and the worker must obey (worker.preflight.confine.worker_settings:
    its input dirs, whether remote code may run), given as the daemon resolved them, not as its own
    environment happened to spell them. `extra_env`: what the executor tells this one worker, such as its
    node's part of a job across nodes (FTQ_NNODES, FTQ_NODE_RANK, FTQ_MASTER_ADDR, FTQ_MASTER_PORT:
    worker.launch.nodes); applied after the FTQ_ strip, so it reaches the worker, but it cannot change the GPUs
    or the start gate.
    """
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("FTQ_") and k not in PASSED_TO_WORKERS]:
        del env[key]  # the worker takes nothing from the daemon's settings but these; its spec is its input
    env.update(daemon_settings or {})
    env.update(extra_env or {})
    env.update(
        CUDA_VISIBLE_DEVICES=cuda_visible_devices,
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    env[GATE_ENV] = "stdin"  # wait for release(): the pid is in the database before the worker does anything
    if cpu_threads:
        env["OMP_NUM_THREADS"] = str(cpu_threads)
    return env


def spawn_worker(
    attempt_id: int,
    run_dir: Path,
    spec: dict[str, Any],
    cuda_visible_devices: str,
    cpu_threads: int | None = None,
    module: str = "worker",
    daemon_settings: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    log_name: str = LOG_FILE,
) -> WorkerProcess:
    """Write the spec into the run dir and start `python -m worker RUN_DIR` in a new session.

    The worker waits at its start gate (worker.spec.gate) until `release` says go: the caller stores the
    pid first, so that a daemon killed at any instant leaves no worker that trains untracked.

    A job across nodes starts one worker per node on the same (shared) run dir, each with its node's
    `extra_env` (see worker_env) and a log of its own (`log_name`: worker.node<R>.log for node rank
    R > 0), so that two launchers never write into one log. The nodes may write the spec and make the
    checkpoints link at the same moment: the spec is written whole (a rename), and a link that another
    node made first is as good as ours.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    write_whole(run_dir / SPEC_FILE, json.dumps(spec, indent=2))
    # Checkpoints belong to the job, not the attempt, so a requeued attempt resumes from them.
    shared = run_dir.parent / CHECKPOINT_DIR
    shared.mkdir(exist_ok=True)
    if not (run_dir / CHECKPOINT_DIR).exists():
        try:
            (run_dir / CHECKPOINT_DIR).symlink_to(shared, target_is_directory=True)
        except FileExistsError:  # another node of the job made it just now
            pass
    with (run_dir / log_name).open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", module, str(run_dir)],
            cwd=run_dir,
            env=worker_env(cuda_visible_devices, cpu_threads, daemon_settings, extra_env),
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return WorkerProcess(attempt_id, popen.pid, run_dir, process_start_time(popen.pid), popen)


def write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all: a reader, or another writer of the same text, never sees half.

    The temporary name is random (mkstemp), not the pid: workers of one job on two nodes may share a pid.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # as write_text would leave it; mkstemp's is 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def release(proc: WorkerProcess) -> bool:
    """Tell a worker waiting at its start gate to go; False when it is gone already (it then starts nothing)."""
    pipe = proc.popen.stdin if proc.popen is not None else None
    if pipe is None:
        return False
    try:
        pipe.write(GO + b"\n")
        pipe.close()
        return True
    except (BrokenPipeError, ValueError, OSError):
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a whole process group; False when none of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        # A group we may not signal is not ours any more (the pid was reused).
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (zombies of ours included until reaped)."""
    return signal_group(pgid, 0)


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` in clock ticks, so a reused pid is never taken for ours."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_time


def same_process(pid: int, start_time: int | None) -> bool:
    """Whether `pid` is still the live process that started at `start_time`.

    A zombie is not: an adopted worker's parent is init (or whichever subreaper
    took it when the daemon died), which may be slow to reap it, and the worker
    has ended all the same.
    """
    if start_time is None:
        return False
    stat = read_stat(pid)
    return stat is not None and stat.start_time == start_time and stat.state not in ("Z", "X")


def kill_leftovers(processes: dict[int, int | None]) -> None:
    """SIGKILL every remembered process of an attempt that is still the same process, and its group."""
    ours = os.getpgid(0)
    for pid, start_time in processes.items():
        if not same_process(pid, start_time):
            continue
        pgid = _pgid(pid)
        if pgid is not None and pgid != ours:
            signal_group(pgid, signal.SIGKILL)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not any(same_process(p, t) for p, t in processes.items()), timeout=5.0)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
