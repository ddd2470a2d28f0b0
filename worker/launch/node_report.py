"""What one node's torchrun said when it ended: its failure table, and the report its launcher leaves.

A job across nodes has one launcher per node: those of node rank r > 0 leave what
their torchrun said in RUN_DIR/ranks/node-r.json (a NodeReport), and the launcher
of node rank 0 adds them up with every rank's report (worker.launch.ranks.decide_gang_end).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.launch.rank_report import write_rank_report
from worker.spec.layout import node_report_file

# One entry of the table torchrun prints when a rank fails (torch.distributed.elastic ChildFailedError).
_FAILURE_ENTRY = re.compile(
    r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)"
)
# What torchrun logs when a rank did not stop within the shutdown timeout and it sent SIGKILL.
_FORCE_KILLED = re.compile(r"Unable to shutdown process (\d+) via")


def parse_torchrun_failures(text: str) -> dict[int, int]:
    """rank -> exit code (negative: killed by that signal) from the failure table torchrun prints."""
    return {int(rank): int(code) for rank, code, _ in _FAILURE_ENTRY.findall(text)}


def ranks_killed_by_torchrun(text: str) -> set[int]:
    """The ranks torchrun itself SIGKILLed because they did not stop in time on its SIGTERM."""
    pids = {int(pid) for pid in _FORCE_KILLED.findall(text)}
    return {int(rank) for rank, _, pid in _FAILURE_ENTRY.findall(text) if int(pid) in pids}


def node_report_path(ranks_dir: Path, node_rank: int) -> Path:
    """Where the launcher of node rank r > 0 leaves what its torchrun said, for the launcher of node rank 0."""
    return ranks_dir / node_report_file(node_rank)


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
