"""The end of a multi-GPU run: the one `end` record every rank's report adds up to.

Each rank leaves a report at its end (worker.launch.rank_report); the launcher
decides the run's end from all of them, from what torchrun said of the ranks
that died without reporting, and from whether a cancel came in. For a job across
several nodes, the launcher of node rank 0 adds every node's report
(worker.launch.node_report) to them (decide_gang_end). Pure, and without torch:
the launcher imports it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.launch.node_report import NodeReport
from worker.launch.oom import is_oom, tried_to_allocate_bytes
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM, describe_rank_exit

# The end-record fields a rank's report carries over into the run's end record.
_CARRIED = ("current_steps", "total_steps", "output", "final_loss", "plots", "plot_error", "tensorboard_dir")


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
        error = f"{torchrun_name} {describe_rank_exit(torchrun_rc)} and no rank reported why"
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
        phrase = f"rank {r.rank} {describe_rank_exit(code)} before it could report"
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
