"""The ranks of a multi-GPU run: what each reports at its end, and the one `end` record they add up to.

Under worker.launch every rank runs the ordinary recipe, but none writes the
`end` record: each leaves a report (the record it would have written, plus its
exit code) in RUN_DIR/ranks/rank-N.json, and the launcher decides the run's end
from all of them, from what torchrun said of the ranks that died without
reporting, and from whether a cancel came in. Pure but for the report file, and
without torch: the launcher imports it.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.spec import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM

RANKS_DIR = "ranks"  # RUN_DIR/ranks: each rank's report, and torchrun's per-rank logs under */attempt_0/<rank>/
RANKS_DIR_ENV = "FTQ_RANKS_DIR"  # set by the launcher: where a rank writes its report instead of an `end` record

# Text that means a process ran out of GPU memory, whichever layer said it: PyTorch's caching allocator
# (torch.OutOfMemoryError, or the driver error behind expandable segments), a raw CUDA call, cuBLAS / cuDNN
# failing to allocate their workspace, or NCCL (whose "out of memory" may come a line or two after "NCCL").
# Host memory (Python's MemoryError, DefaultCPUAllocator) is deliberately not here: a smaller micro-batch is
# not the cure for it, and the daemon retries an OOM with one.
OOM_PATTERNS = (
    re.compile(r"\b(?:CUDA|HIP) out of memory", re.IGNORECASE),
    re.compile(r"\bOutOfMemoryError\b"),
    re.compile(r"CUDA (?:driver )?error: out of memory", re.IGNORECASE),
    re.compile(r"cudaErrorMemoryAllocation"),
    re.compile(r"CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED"),
    re.compile(r"NCCL(?:.|\n){0,400}?\bout of memory\b", re.IGNORECASE),
)
# PyTorch's allocator says how much it wanted: "Tried to allocate 2.00 GiB", "... 512.00 KiB", "... 96 bytes".
_TRIED_TO_ALLOCATE = re.compile(r"Tried to allocate (\d+(?:\.\d+)?) ?(bytes|B|KiB|MiB|GiB|TiB)\b", re.IGNORECASE)
_UNIT_BYTES = {"bytes": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}

# One entry of the table torchrun prints when a rank fails (torch.distributed.elastic ChildFailedError).
_FAILURE_ENTRY = re.compile(
    r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)"
)
# What torchrun logs when a rank did not stop within the shutdown timeout and it sent SIGKILL.
_FORCE_KILLED = re.compile(r"Unable to shutdown process (\d+) via")
# The end-record fields a rank's report carries over into the run's end record.
_CARRIED = ("current_steps", "total_steps", "output", "final_loss", "plots", "plot_error", "tensorboard_dir")


# ---- the rank side -----------------------------------------------------------------------------------------------


def is_rank(env: Mapping[str, str]) -> bool:
    """Whether this process is one of torchrun's ranks."""
    return "LOCAL_RANK" in env or "RANK" in env


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


# ---- the launcher's side -----------------------------------------------------------------------------------------


def is_oom(text: str) -> bool:
    """Whether an error message or a log says the process ran out of GPU memory.

    The one test for "out of memory" in ftq: the recipe applies it to the
    exception that ended a run (exception_is_oom), the launcher to the log of a
    rank that died without reporting.
    """
    return any(pattern.search(text) for pattern in OOM_PATTERNS)


def exception_is_oom(exc: BaseException) -> bool:
    """Whether an exception, or one it was raised from or while handling, says GPU memory ran out.

    By class name as well as by message, so that this module needs no torch:
    torch.OutOfMemoryError (torch.cuda.OutOfMemoryError) is caught whatever its
    message, and an OOM that a library re-raised as its own error still counts.
    """
    return any(
        any(cls.__name__ == "OutOfMemoryError" for cls in type(e).__mro__) or is_oom(f"{type(e).__name__}: {e}")
        for e in exception_chain(exc)
    )


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then the one it was raised from or while handling, and so on; a cycle ends it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def tried_to_allocate_bytes(text: str) -> int | None:
    """The allocation that failed, in bytes, from PyTorch's "Tried to allocate 2.00 GiB"; None when not said."""
    match = _TRIED_TO_ALLOCATE.search(text)
    if match is None:
        return None
    return int(float(match.group(1)) * _UNIT_BYTES[match.group(2).lower()])


def parse_torchrun_failures(text: str) -> dict[int, int]:
    """rank -> exit code (negative: killed by that signal) from the failure table torchrun prints."""
    return {int(rank): int(code) for rank, code, _ in _FAILURE_ENTRY.findall(text)}


def ranks_killed_by_torchrun(text: str) -> set[int]:
    """The ranks torchrun itself SIGKILLed because they did not stop in time on its SIGTERM."""
    pids = {int(pid) for pid in _FORCE_KILLED.findall(text)}
    return {int(rank) for rank, _, pid in _FAILURE_ENTRY.findall(text) if int(pid) in pids}


def describe_exit(code: int) -> str:
    """'exited with code 1', 'was killed by signal 9 (SIGKILL)' (torchrun's negative codes are signals)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


@dataclass(frozen=True)
class RankReport:
    """What is known of one rank when torchrun has ended."""

    rank: int
    outcome: dict[str, Any] | None = None  # its own report: the end record it would have written, plus exit_code
    exit_code: int | None = None  # from torchrun's failure table; None when it did not list the rank
    log_tail: str = ""  # the last lines of its log
    killed_by_torchrun: bool = False  # SIGKILLed by torchrun when it did not stop in time: a consequence, not a cause

    @property
    def status(self) -> str | None:
        return self.said("status")

    def said(self, key: str) -> Any:
        return None if self.outcome is None else self.outcome.get(key)


def decide_end(
    reports: Iterable[RankReport], torchrun_rc: int, cancelled: bool, torchrun_tail: str = ""
) -> tuple[dict[str, Any], int]:
    """The run's end-record fields and the launcher's exit code, from everything the ranks left."""
    reports = sorted(reports, key=lambda r: r.rank)
    first = next((r.outcome for r in reports if r.rank == 0 and r.outcome), {})
    fields: dict[str, Any] = {key: first[key] for key in _CARRIED if key in first}
    if "current_steps" not in fields:  # rank 0 died without a word: the ranks step together, another one knows
        other = next((r.outcome for r in reports if r.outcome and "current_steps" in r.outcome), {})
        fields.update((key, other[key]) for key in ("current_steps", "total_steps") if key in other)
    for peak in ("peak_vram_reserved", "peak_vram_allocated"):
        peaks = [r.outcome[peak] for r in reports if r.outcome and isinstance(r.outcome.get(peak), (int, float))]
        if peaks:  # the rank closest to running out is the one that matters
            fields[peak] = max(peaks)

    # Every rank said it succeeded: torchrun failing after that (say, in its own teardown) undoes nothing.
    if first.get("status") == "succeeded" and (torchrun_rc == 0 or all(r.status == "succeeded" for r in reports)):
        return {"status": "succeeded", **fields}, 0
    if cancelled:
        return {"status": "cancelled", **fields, "error": "cancelled (SIGTERM)"}, EXIT_CANCELLED
    bad_input = [r for r in reports if r.said("exit_code") == EXIT_BAD_INPUT]
    if bad_input:  # every rank read the same spec: one says it for all
        return {"status": "failed", **fields, "error": bad_input[0].said("error")}, EXIT_BAD_INPUT

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
    if oom:
        wanted = _tried_to_allocate(unsuccessful)
        if wanted is not None:
            fields["tried_to_allocate_bytes"] = wanted
        return {"status": "oom", **fields, "error": error[:2000]}, EXIT_OOM
    return {"status": "failed", **fields, "error": error[:2000]}, EXIT_FAILED


def _tried_to_allocate(reports: list[RankReport]) -> int | None:
    """The failed allocation of the first rank that ran out of memory: from its report, else from its log."""
    for r in reports:
        said = r.said("tried_to_allocate_bytes")
        if isinstance(said, int):
            return said
    for r in reports:
        if r.status != "oom" and is_oom(r.log_tail):
            wanted = tried_to_allocate_bytes(r.log_tail)
            if wanted is not None:
                return wanted
    return None


def failure_causes(reports: Iterable[RankReport]) -> list[str]:
    """One phrase per rank that failed, likeliest cause first.

    First the ranks that ran out of memory, then those that died without
    reporting (killed, or crashed in native code), then those that raised, in
    the order they did. A rank that torchrun stopped, on its SIGTERM or with
    SIGKILL when it did not stop in time, only followed another's failure: it
    is named only when nothing else is.
    """
    reports = list(reports)
    oom = [r for r in reports if r.status == "oom"]
    silent = [(r, r.exit_code) for r in reports if r.outcome is None and r.exit_code and not _stopped(r)]
    raised = sorted((r for r in reports if r.status == "failed"), key=lambda r: (str(r.said("timestamp")), r.rank))
    stopped = [r for r in reports if _stopped(r)]
    causes = [f"rank {r.rank}: {r.said('error') or 'out of memory'}" for r in oom]
    for r, code in silent:
        phrase = f"rank {r.rank} {describe_exit(code)} before it could report"
        if code == -signal.SIGKILL:  # nothing of its own to say: its log ends wherever it was
            phrase += " (likely the host ran out of memory, or kill -9)"
        elif last := _last_line(r.log_tail):
            phrase += f"; its log ends: {last}"
        causes.append(phrase)
    causes += [f"rank {r.rank}: {r.said('error') or 'failed'}" for r in raised]
    if not causes:
        causes = [
            f"rank {r.rank} was killed by torchrun when it did not stop in time on its SIGTERM"
            if r.killed_by_torchrun
            else f"rank {r.rank} was stopped by a SIGTERM that ftq did not send"
            for r in stopped
        ]
    return causes


def _stopped(r: RankReport) -> bool:
    """Whether the rank ended because torchrun stopped it (SIGTERM, then SIGKILL when it did not stop in time)."""
    if r.outcome is not None:
        return r.status == "cancelled"
    return r.killed_by_torchrun or r.exit_code == -signal.SIGTERM


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""
