"""The ranks of a multi-GPU run: what each reports at its end, and the one `end` record they add up to.

Under worker.launch.torchrun every rank runs the ordinary recipe, but none writes the
`end` record: each leaves a report (the record it would have written, plus its
exit code) in RUN_DIR/ranks/rank-N.json (N the global rank), and the launcher
decides the run's end from all of them, from what torchrun said of the ranks
that died without reporting, and from whether a cancel came in. A job across
several nodes has one launcher per node: those of node rank r > 0 leave what
their torchrun said in RUN_DIR/ranks/node-r.json (a NodeReport), and the launcher
of node rank 0 adds them up with every rank's report (decide_gang_end). Pure but
for the report files, and without torch: the launcher imports it.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.spec.job import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM

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
    reports: Iterable[RankReport],
    torchrun_rc: int,
    cancelled: bool,
    torchrun_tail: str = "",
    node_causes: Sequence[str] = (),
    torchrun_name: str = "torchrun",
) -> tuple[dict[str, Any], int]:
    """The run's end-record fields and the launcher's exit code, from everything the ranks left.

    `node_causes`: what went wrong with whole nodes of a job across nodes (a launcher that did not
    report, or could not start its torchrun); `torchrun_name` names the torchrun that failed.
    """
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
    causes = failure_causes(reports, node_causes)
    if causes:
        error = "; ".join(causes)
    else:
        error = f"{torchrun_name} {describe_exit(torchrun_rc)} and no rank reported why"
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


def failure_causes(reports: Iterable[RankReport], node_causes: Sequence[str] = ()) -> list[str]:
    """One phrase per rank that failed, likeliest cause first.

    First the ranks that ran out of memory, then the nodes that failed as a
    whole (`node_causes`: their ranks' peers only saw their sockets close), then
    the ranks that died without reporting (killed, or crashed in native code),
    then those that raised, in the order they did. A rank that torchrun stopped, on its SIGTERM or with
    SIGKILL when it did not stop in time, only followed another's failure: it
    is named only when nothing else is.
    """
    reports = list(reports)
    oom = [r for r in reports if r.status == "oom"]
    silent = [(r, r.exit_code) for r in reports if r.outcome is None and r.exit_code and not _stopped(r)]
    raised = sorted((r for r in reports if r.status == "failed"), key=lambda r: (str(r.said("timestamp")), r.rank))
    stopped = [r for r in reports if _stopped(r)]
    causes = [f"rank {r.rank}: {r.said('error') or 'out of memory'}" for r in oom]
    causes += node_causes
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


# ---- a job across nodes ------------------------------------------------------------------------------------------


def node_report_path(ranks_dir: Path, node_rank: int) -> Path:
    """Where the launcher of node rank r > 0 leaves what its torchrun said, for the launcher of node rank 0."""
    return ranks_dir / f"node-{node_rank}.json"


@dataclass(frozen=True)
class NodeReport:
    """What one node's launcher knows when its torchrun has ended: the node's part of a job across nodes."""

    node_rank: int
    reported: bool = True  # False: its launcher left no report (it died, its node was lost, or it never started)
    exit_code: int | None = None  # its torchrun's exit code; None when torchrun never ran (see error)
    failures: Mapping[int, int] = field(default_factory=dict)  # global rank -> exit code, from its failure table
    killed: frozenset[int] = frozenset()  # the global ranks its torchrun SIGKILLed for not stopping in time
    cancelled: bool = False  # its launcher was sent a SIGTERM
    tail: str = ""  # the last lines of its torchrun's output
    error: str | None = None  # why its launcher could not start torchrun (a bad FTQ_ variable, say)
    rendezvous: str = ""  # MASTER_ADDR:MASTER_PORT of the launch it belongs to

    @classmethod
    def from_torchrun(
        cls, node_rank: int, rc: int, tail: str, cancelled: bool, rendezvous: str = "", tail_chars: int = 8000
    ) -> NodeReport:
        """The report of a node whose torchrun ran and ended with `rc`, its output ending with `tail`."""
        return cls(
            node_rank,
            exit_code=rc,
            failures=parse_torchrun_failures(tail),
            killed=frozenset(ranks_killed_by_torchrun(tail)),
            cancelled=cancelled,
            tail=tail[-tail_chars:],
            rendezvous=rendezvous,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "node_rank": self.node_rank,
            "rendezvous": self.rendezvous,
            "exit_code": self.exit_code,
            "failures": {str(rank): code for rank, code in sorted(self.failures.items())},
            "killed": sorted(self.killed),
            "cancelled": self.cancelled,
            "error": self.error,
            "tail": self.tail,
        }

    @classmethod
    def from_json(cls, node_rank: int, found: Any, rendezvous: str = "") -> NodeReport:
        """The report as read back; one that is missing, unreadable or of another launch reads as not reported."""
        if not isinstance(found, dict) or found.get("node_rank") != node_rank:
            return cls(node_rank, reported=False)
        if rendezvous and found.get("rendezvous") != rendezvous:  # left by an earlier run of this run dir
            return cls(node_rank, reported=False)
        try:
            return cls(
                node_rank,
                exit_code=None if found.get("exit_code") is None else int(found["exit_code"]),
                failures={int(rank): int(code) for rank, code in (found.get("failures") or {}).items()},
                killed=frozenset(int(rank) for rank in found.get("killed") or ()),
                cancelled=bool(found.get("cancelled")),
                tail=str(found.get("tail") or ""),
                error=None if found.get("error") is None else str(found["error"]),
                rendezvous=str(found.get("rendezvous") or ""),
            )
        except (TypeError, ValueError, AttributeError):
            return cls(node_rank, reported=False)

    @property
    def failed(self) -> bool:
        """Whether this node's part did not end well: no report, no torchrun, or a torchrun that failed."""
        return not self.reported or self.error is not None or self.exit_code != 0


def write_node_report(path: Path, report: NodeReport) -> None:
    """Written whole or not at all (a rename), as a rank's report is: node rank 0 may be reading it already."""
    write_rank_report(path, report.to_json())


def read_node_report(path: Path, node_rank: int, rendezvous: str = "") -> NodeReport:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    return NodeReport.from_json(node_rank, found, rendezvous)


def gang_rank_reports(
    nodes: Sequence[NodeReport],
    nproc_per_node: int,
    outcomes: Mapping[int, dict[str, Any] | None],
    log_tails: Mapping[int, str],
) -> list[RankReport]:
    """Every rank of a job across nodes, each with what its own node's torchrun said of it.

    Global rank = node rank * nproc_per_node + local rank, as torchrun numbers them.
    """
    by_rank = {n.node_rank: n for n in nodes}
    reports = []
    for rank in range(len(nodes) * nproc_per_node):
        node = by_rank.get(rank // nproc_per_node, NodeReport(rank // nproc_per_node, reported=False))
        reports.append(
            RankReport(
                rank,
                outcome=outcomes.get(rank),
                exit_code=node.failures.get(rank),
                log_tail=log_tails.get(rank, ""),
                killed_by_torchrun=rank in node.killed,
            )
        )
    return reports


def decide_gang_end(
    reports: Iterable[RankReport], nodes: Iterable[NodeReport], cancelled: bool
) -> tuple[dict[str, Any], int]:
    """The one end record of a job across nodes, from every rank's report and every node's torchrun.

    One node is the single-node case: this is decide_end with that torchrun's exit code and output. A
    node whose launcher left no report, or could not start its torchrun, is a cause of its own: its
    ranks' peers only saw their sockets close. A cancel sent to any node's launcher is a cancel (the
    daemon sends it to every node of the job).
    """
    nodes = sorted(nodes, key=lambda n: n.node_rank)
    cancelled = cancelled or any(n.cancelled for n in nodes)
    node_causes = [
        f"node {n.node_rank} (its launcher) did not report" if not n.reported else f"node {n.node_rank}: {n.error}"
        for n in nodes
        if not n.reported or n.error is not None
    ]
    failed = next((n for n in nodes if n.failed), None)
    if failed is None:
        rc, tail, name = 0, nodes[0].tail if nodes else "", "torchrun"
    else:
        rc = failed.exit_code if failed.reported and failed.exit_code is not None else EXIT_FAILED
        tail = failed.tail
        name = "torchrun" if len(nodes) == 1 else f"torchrun on node {failed.node_rank}"
    return decide_end(reports, rc, cancelled, tail, node_causes=node_causes, torchrun_name=name)


def _stopped(r: RankReport) -> bool:
    """Whether the rank ended because torchrun stopped it (SIGTERM, then SIGKILL when it did not stop in time)."""
    if r.outcome is not None:
        return r.status == "cancelled"
    return r.killed_by_torchrun or r.exit_code == -signal.SIGTERM


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""
