"""Multi-GPU jobs: re-run the worker under torchrun, and end the run with one `end` record.

`python -m worker RUN_DIR` for a spec with `gpus > 1`, or with a DeepSpeed config
(which needs a distributed launch even on one GPU, as in LLaMA-Factory), does not
train in its own process. It starts

    python -m torch.distributed.run --standalone --nproc-per-node N -m worker RUN_DIR

and waits. Every rank runs the ordinary recipe (worker.train); rank 0 writes the
`start` record and the progress records. The `end` record is written here, once,
from what each rank reported at its end (RUN_DIR/ranks/rank-N.json), what
torchrun said of the ranks that died without reporting, and whether a cancel
came in. Only here are all three known: a rank that torchrun stops because
another rank failed gets the same SIGTERM as a cancel, and rank 0 alone cannot
tell that rank 1 ran out of memory.

The processes: launcher (the daemon's process group) -> torchrun (a group of its
own, so that a cancel reaches it once, from here; two SIGTERMs would cut its
shutdown of the ranks short) -> ranks (torchrun gives each a session of its own).
Each one dies with its parent (PR_SET_PDEATHSIG), so the daemon's SIGKILL of the
launcher's group still takes every rank with it.

With `--standalone` torchrun binds its rendezvous store to port 0, so the kernel
picks a free port and two jobs started at the same moment cannot collide; the
ranks' own gloo/NCCL sockets are ephemeral too.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from worker.ranks import (
    RANKS_DIR,
    RANKS_DIR_ENV,
    RankReport,
    decide_end,
    is_rank,
    parse_torchrun_failures,
    ranks_killed_by_torchrun,
)
from worker.records import append_record, hms
from worker.spec import EXIT_CANCELLED, EXIT_FAILED, METRICS_FILE, SPEC_FILE, JobSpec

TAIL_LINES = 400  # torchrun output kept in memory to read its failure table
# How long torchrun lets the ranks stop on its SIGTERM before it kills them. A rank blocked in a collective or in
# the rendezvous (waiting for a peer that was cancelled before it joined) cannot run its handler at all; this
# bound, below the daemon's default cancel grace (FTQ_CANCEL_GRACE_S, 10 s), leaves the launcher time to write
# the end record before the daemon's SIGKILL. A cancel saves a checkpoint at the ranks' next step boundary: a LoRA
# adapter fits well within this; the optimizer state of a large full fine-tune may not, and a save cut short here
# leaves a checkpoint without its trainer_state.json, which the next attempt passes over for the one before.
RANK_SHUTDOWN_S = 5
LOG_TAIL_BYTES = 16 << 10

_PR_SET_PDEATHSIG = 1


# ---- deciding --------------------------------------------------------------------------------------------------


def launch_plan(spec: JobSpec | None, env: Mapping[str, str]) -> int | None:
    """How many ranks to start under torchrun, or None to train in this process.

    A spec that does not validate trains in-process: the recipe reports it with
    every other problem, exactly as for a one-GPU job.
    """
    if spec is None or is_rank(env):
        return None
    if spec.gpus > 1 or spec.deepspeed is not None:
        return max(spec.gpus, 1)
    return None


def read_spec(run_dir: Path) -> JobSpec | None:
    """The spec if RUN_DIR/spec.json holds a valid one, else None (without a word: the recipe says why)."""
    try:
        return JobSpec.model_validate(json.loads((run_dir / SPEC_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError):
        return None


def torchrun_argv(run_dir: Path, nproc: int, log_dir: Path, python: str = sys.executable) -> list[str]:
    """The torchrun command line: standalone (a free port of its own), every rank's output kept and teed."""
    return [
        python, "-m", "torch.distributed.run",
        "--standalone",
        "--nnodes", "1",
        "--nproc-per-node", str(nproc),
        "--max-restarts", "0",  # a failed attempt is the daemon's to requeue, with its reason
        "--shutdown-timeout", str(RANK_SHUTDOWN_S),
        "--role", "rank",  # torchrun prefixes teed lines with [<role><local rank>]: -> [rank0]:
        "--log-dir", str(log_dir),
        "--redirects", "3",
        "--tee", "3",
        "-m", "worker", str(run_dir),
    ]  # fmt: skip


# ---- processes that die together --------------------------------------------------------------------------------


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


# ---- the launcher ------------------------------------------------------------------------------------------------


class _Forwarder:
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


def launch(run_dir: Path, nproc: int, cancel_requested: Callable[[], bool] = lambda: False) -> int:
    """Run the job in RUN_DIR as `nproc` ranks under torchrun; write its `end` record; return the exit code."""
    started = time.monotonic()
    run_dir = run_dir.resolve()
    forwarder = _Forwarder()
    signal.signal(signal.SIGTERM, forwarder)
    signal.signal(signal.SIGINT, forwarder)
    if cancel_requested():  # a SIGTERM before the forwarder was in place
        forwarder.received += 1

    ranks_dir = run_dir / RANKS_DIR
    ranks_dir.mkdir(exist_ok=True)
    for stale in ranks_dir.glob("rank-*.json"):  # this run dir was run before: only this launch's reports count
        stale.unlink()
    metrics = run_dir / METRICS_FILE

    def end(fields: dict[str, Any], code: int) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the end record must not be cut in half
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fields = {"status": fields["status"], **_last_progress(metrics), **fields}
        record = append_record(metrics, "end", **fields, elapsed_time=hms(time.monotonic() - started))
        _say(f"end: {record['status']}" + (f" ({record['error']})" if "error" in record else "") + f"; exit {code}")
        return code

    if forwarder.requested:
        return end({"status": "cancelled", "error": "cancelled (SIGTERM)"}, EXIT_CANCELLED)

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible and len(visible.split(",")) != nproc:
        _say(f"warning: {nproc} ranks but CUDA_VISIBLE_DEVICES={visible}; each rank takes the GPU of its local rank")
    argv = torchrun_argv(run_dir, nproc, ranks_dir)
    env = {**os.environ, RANKS_DIR_ENV: str(ranks_dir), "PYTHONUNBUFFERED": "1"}
    _say(f"starting {nproc} ranks under torchrun; their logs are kept in {ranks_dir}")
    launcher_pid = os.getpid()
    _libc()  # load it here, not in the forked child

    def own_group_dying_with_us() -> None:  # runs in the child between fork and exec
        os.setpgid(0, 0)
        die_with_parent(signal.SIGKILL)
        if os.getppid() != launcher_pid:  # the launcher died before the line above took effect
            os._exit(1)

    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=own_group_dying_with_us,  # safe here: the launcher has started no threads
            close_fds=True,
        )
    except OSError as exc:
        return end({"status": "failed", "error": f"could not start torchrun: {exc}"}, EXIT_FAILED)
    forwarder.attach(proc)
    assert proc.stdout is not None
    tail = _copy_lines(proc.stdout, TAIL_LINES)
    rc = proc.wait()

    failures, killed, logs = parse_torchrun_failures(tail), ranks_killed_by_torchrun(tail), rank_logs(ranks_dir)
    reports = [
        RankReport(
            rank,
            outcome=_read_report(ranks_dir / f"rank-{rank}.json"),
            exit_code=failures.get(rank),
            log_tail=_tail(logs.get(rank)),
            killed_by_torchrun=rank in killed,
        )
        for rank in range(nproc)
    ]
    fields, code = decide_end(reports, rc, cancelled=forwarder.requested, torchrun_tail=tail)
    return end(fields, code)


def rank_logs(ranks_dir: Path) -> dict[int, Path]:
    """rank -> its stderr log, from torchrun's newest run under ranks_dir (<rdzv id>_*/attempt_N/<rank>/)."""
    attempts = sorted(ranks_dir.glob("*/attempt_*"), key=lambda p: p.stat().st_mtime)
    if not attempts:
        return {}
    logs = {int(d.name): d / "stderr.log" for d in attempts[-1].iterdir() if d.name.isdigit()}
    return {rank: path for rank, path in logs.items() if path.exists()}


def _copy_lines(stream: IO[bytes], keep: int) -> str:
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


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _tail(path: Path | None) -> str:
    """The file's last LOG_TAIL_BYTES, decoded; empty when there is no such file."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_progress(metrics: Path) -> dict[str, Any]:
    """Steps from the last record that has them: what a run whose rank 0 never reported got to."""
    for line in reversed(_tail(metrics).splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "current_steps" in record:
            return {key: record[key] for key in ("current_steps", "total_steps") if key in record}
    return {"current_steps": 0}


def _say(message: str) -> None:
    print(f"ftq launcher: {message}", flush=True)
