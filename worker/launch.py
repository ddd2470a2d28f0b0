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
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from worker.records import append_record, hms
from worker.spec import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM, METRICS_FILE, SPEC_FILE, JobSpec

RANKS_DIR = "ranks"  # RUN_DIR/ranks: each rank's report, and torchrun's per-rank logs under */attempt_0/<rank>/
RANKS_DIR_ENV = "FTQ_RANKS_DIR"  # set by the launcher: where a rank writes its report instead of an `end` record
TAIL_LINES = 400  # torchrun output kept in memory to read its failure table
LOG_TAIL_BYTES = 16 << 10

# Text that means a rank ran out of GPU memory, whichever layer said it (PyTorch, cuBLAS, NCCL).
OOM_PATTERNS = (
    re.compile(r"CUDA out of memory", re.IGNORECASE),
    re.compile(r"\bOutOfMemoryError\b"),
    re.compile(r"CUDA error: out of memory", re.IGNORECASE),
    re.compile(r"CUBLAS_STATUS_ALLOC_FAILED"),
    re.compile(r"NCCL.*\bout of memory\b", re.IGNORECASE),
)

# One entry of the table torchrun prints when a rank fails (torch.distributed.elastic ChildFailedError).
_FAILURE_ENTRY = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
# The end-record fields a rank's report carries over into the run's end record.
_CARRIED = ("current_steps", "total_steps", "output", "final_loss")
_PR_SET_PDEATHSIG = 1


# ---- deciding --------------------------------------------------------------------------------------------------


def is_rank(env: Mapping[str, str]) -> bool:
    """Whether this process is already one of torchrun's ranks."""
    return "LOCAL_RANK" in env or "RANK" in env


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
        "--role", "rank",  # torchrun prefixes teed lines with [<role><local rank>]: -> [rank0]:
        "--log-dir", str(log_dir),
        "--redirects", "3",
        "--tee", "3",
        "-m", "worker", str(run_dir),
    ]  # fmt: skip


def is_oom(text: str) -> bool:
    """Whether a rank's error or log says it ran out of GPU memory."""
    return any(pattern.search(text) for pattern in OOM_PATTERNS)


def parse_torchrun_failures(text: str) -> dict[int, int]:
    """rank -> exit code (negative: killed by that signal) from the failure table torchrun prints."""
    return {int(rank): int(code) for rank, code in _FAILURE_ENTRY.findall(text)}


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        hint = " (likely the host ran out of memory, or kill -9)" if -code == signal.SIGKILL else ""
        return f"was killed by signal {-code} ({name}){hint}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class RankReport:
    """What is known of one rank when torchrun has ended."""

    rank: int
    outcome: dict[str, Any] | None = None  # its own report: the end record it would have written, plus exit_code
    exit_code: int | None = None  # from torchrun's failure table; None when it did not list the rank
    log_tail: str = ""  # the last lines of its log

    @property
    def status(self) -> str | None:
        return None if self.outcome is None else self.outcome.get("status")


def decide_end(
    reports: Iterable[RankReport], torchrun_rc: int, cancelled: bool, torchrun_tail: str = ""
) -> tuple[dict[str, Any], int]:
    """The run's end-record fields and the launcher's exit code, from everything the ranks left."""
    reports = sorted(reports, key=lambda r: r.rank)
    first = next((r.outcome for r in reports if r.rank == 0 and r.outcome), {})
    fields: dict[str, Any] = {key: first[key] for key in _CARRIED if key in first}
    peaks = [r.outcome["peak_vram_reserved"] for r in reports if r.outcome and "peak_vram_reserved" in r.outcome]
    if peaks:  # the rank closest to running out is the one that matters
        fields["peak_vram_reserved"] = max(peaks)

    if first.get("status") == "succeeded" and torchrun_rc == 0:
        return {"status": "succeeded", **fields}, 0
    if cancelled:
        return {"status": "cancelled", **fields, "error": "cancelled (SIGTERM)"}, EXIT_CANCELLED
    bad_input = [r for r in reports if r.outcome and r.outcome.get("exit_code") == EXIT_BAD_INPUT]
    if bad_input:  # every rank read the same spec: one says it for all
        return {"status": "failed", **fields, "error": bad_input[0].outcome.get("error")}, EXIT_BAD_INPUT

    unsuccessful = [r for r in reports if r.status != "succeeded"]
    oom = any(r.status == "oom" or is_oom(r.log_tail) for r in unsuccessful)
    causes = failure_causes(reports)
    if causes:
        error = "; ".join(causes)
    else:
        error = f"torchrun {describe_exit(torchrun_rc)} and no rank reported why"
        last = _last_line(torchrun_tail)
        if last:
            error += f"; its output ends: {last}"
    status, code = ("oom", EXIT_OOM) if oom else ("failed", EXIT_FAILED)
    return {"status": status, **fields, "error": error[:2000]}, code


def failure_causes(reports: Iterable[RankReport]) -> list[str]:
    """One phrase per rank that failed, likeliest cause first.

    First the ranks that ran out of memory, then those that died without
    reporting (killed, or crashed in native code), then those that raised, in
    the order they did. A rank that stopped on torchrun's SIGTERM only followed
    another's failure, so it is named only when nothing else is.
    """
    reports = list(reports)
    oom = [r for r in reports if r.status == "oom"]
    silent = [r for r in reports if r.outcome is None and r.exit_code not in (None, 0)]
    raised = sorted(
        (r for r in reports if r.status == "failed"), key=lambda r: (str(r.outcome.get("timestamp", "")), r.rank)
    )
    stopped = [r for r in reports if r.status == "cancelled"]
    causes = [f"rank {r.rank}: {r.outcome.get('error') or 'out of memory'}" for r in oom]
    for r in silent:
        phrase = f"rank {r.rank} {describe_exit(r.exit_code)} before reporting"  # type: ignore[arg-type]
        last = _last_line(r.log_tail)
        causes.append(f"{phrase}; its log ends: {last}" if last else phrase)
    causes += [f"rank {r.rank}: {r.outcome.get('error') or 'failed'}" for r in raised]  # type: ignore[union-attr]
    if not causes:
        causes = [f"rank {r.rank} was stopped by SIGTERM that ftq did not send" for r in stopped]
    return causes


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


# ---- the rank side -----------------------------------------------------------------------------------------------


def rank_report_path(env: Mapping[str, str]) -> Path | None:
    """Where this rank reports its end to the launcher; None when no launcher of ours waits for it."""
    if RANKS_DIR_ENV not in env or not is_rank(env):
        return None
    return Path(env[RANKS_DIR_ENV]) / f"rank-{int(env.get('RANK', '0'))}.json"


def write_rank_report(path: Path, report: dict[str, Any]) -> None:
    """Write the report whole or not at all: the launcher reads it after the rank is gone."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have Linux send `sig` to this process when its parent dies (PR_SET_PDEATHSIG); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# ---- the launcher ------------------------------------------------------------------------------------------------


class _Forwarder:
    """SIGTERM / SIGINT handler: pass a cancel on to torchrun once; a second one insists with SIGKILL."""

    def __init__(self, requested: bool) -> None:
        self.received = int(requested)
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
    forwarder = _Forwarder(requested=False)
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
        fields = {**_last_progress(metrics), **fields}
        record = append_record(metrics, "end", **fields, elapsed_time=hms(time.monotonic() - started))
        _say(f"end: {record['status']}" + (f" ({record['error']})" if "error" in record else "") + f"; exit {code}")
        return code

    if forwarder.requested:
        return end({"status": "cancelled", "error": "cancelled (SIGTERM)"}, EXIT_CANCELLED)

    argv = torchrun_argv(run_dir, nproc, ranks_dir)
    env = {**os.environ, RANKS_DIR_ENV: str(ranks_dir), "PYTHONUNBUFFERED": "1"}
    _say(f"starting {nproc} ranks under torchrun; their logs are kept in {ranks_dir}")
    launcher_pid = os.getpid()

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
            preexec_fn=own_group_dying_with_us,  # noqa: PLW1509 - no threads in this process
            close_fds=True,
        )
    except OSError as exc:
        return end({"status": "failed", "error": f"could not start torchrun: {exc}"}, EXIT_FAILED)
    forwarder.attach(proc)
    assert proc.stdout is not None
    tail = _copy_lines(proc.stdout, TAIL_LINES)
    rc = proc.wait()

    failures = parse_torchrun_failures(tail)
    logs = rank_logs(ranks_dir)
    reports = [
        RankReport(rank, _read_report(ranks_dir / f"rank-{rank}.json"), failures.get(rank), _tail(logs.get(rank)))
        for rank in range(nproc)
    ]
    fields, code = decide_end(reports, rc, cancelled=forwarder.requested, torchrun_tail=tail)
    return end(fields, code)


def rank_logs(ranks_dir: Path) -> dict[int, Path]:
    """rank -> its stderr log, from torchrun's newest run under ranks_dir (<rdzv id>_*/attempt_N/<rank>/)."""
    attempts = sorted(ranks_dir.glob("*/attempt_*"), key=lambda p: p.stat().st_mtime)
    if not attempts:
        return {}
    return {
        int(d.name): d / "stderr.log" for d in attempts[-1].iterdir() if d.name.isdigit() and (d / "stderr.log").exists()
    }


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
    try:
        lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {"current_steps": 0}
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "current_steps" in record:
            return {key: record[key] for key in ("current_steps", "total_steps") if key in record}
    return {"current_steps": 0}


def _say(message: str) -> None:
    print(f"ftq launcher: {message}", flush=True)
