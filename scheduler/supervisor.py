"""Worker processes: spawn, signal, and tell whether any of a job's processes is left.

`subprocess.Popen`, never fork (CUDA and fork don't mix); each worker leads its
own session and process group, so a cancel reaches torchrun ranks and data
loader workers too, and a worker outlives a daemon that dies (STYLE.md 6).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.spec import LOG_FILE, SPEC_FILE


@dataclass
class WorkerProcess:
    attempt_id: int
    popen: subprocess.Popen[bytes]
    run_dir: Path
    start_time: int | None

    @property
    def pid(self) -> int:
        return self.popen.pid


def worker_env(cuda_visible_devices: str, cpu_threads: int | None) -> dict[str, str]:
    """The worker's environment: ours, plus the GPUs it may see and nothing it may not."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("FTQ_")]:
        del env[key]  # the worker takes nothing from the daemon's settings; its spec is its input
    env.update(
        CUDA_VISIBLE_DEVICES=cuda_visible_devices,
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
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
) -> WorkerProcess:
    """Write the spec into the run dir and start `python -m worker RUN_DIR` in a new session."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    with (run_dir / LOG_FILE).open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", module, str(run_dir)],
            cwd=run_dir,
            env=worker_env(cuda_visible_devices, cpu_threads),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return WorkerProcess(attempt_id, popen, run_dir, process_start_time(popen.pid))


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
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])  # field 22 of proc(5), counted from field 3


def same_process(pid: int, start_time: int | None) -> bool:
    return start_time is not None and process_start_time(pid) == start_time
