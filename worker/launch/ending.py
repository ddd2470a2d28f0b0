"""How a launcher ends: the run's one `end` record (one node, or node rank 0), or its node's report (the others).

The `end` record is written here, once, from what each rank reported at its end
(RUN_DIR/ranks/rank-N.json), what torchrun said of the ranks that died without
reporting, and whether a cancel came in. Only here are all three known: a rank
that torchrun stops because another rank failed gets the same SIGTERM as a
cancel, and rank 0 alone cannot tell that rank 1 ran out of memory.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.launch.node_report import NodeReport, node_report_path, write_node_report
from worker.launch.nodes import (
    NODE_REPORT_WAIT_CANCELLED_S,
    NODE_REPORT_WAIT_S,
    NodePlan,
    gang_rank_logs,
    node_exit_code,
    wait_for_node_reports,
)
from worker.launch.processes import Forwarder
from worker.launch.ranks import decide_gang_end, gang_rank_reports
from worker.spec.exits import EXIT_CANCELLED, EXIT_FAILED
from worker.spec.layout import rank_report_file
from worker.spec.records import append_record, hms

LOG_TAIL_BYTES = 16 << 10


@dataclass(frozen=True)
class Ending:
    """What the launcher needs to end its run, whichever way it goes."""

    metrics: Path  # RUN_DIR/metrics.jsonl
    ranks_dir: Path  # RUN_DIR/ranks
    rendezvous: str  # MASTER_ADDR:MASTER_PORT of a job across nodes (":" on one node)
    started: float  # time.monotonic() when the launcher began
    forwarder: Forwarder  # whether, and how often, a cancel came in
    node: NodePlan | None = None  # this node's part of a job across nodes; None on one node
    nproc: int = 0  # ranks on this node

    @property
    def node_rank(self) -> int:
        return 0 if self.node is None else self.node.node_rank

    @property
    def nnodes(self) -> int:
        return 1 if self.node is None else self.node.nnodes

    def end(self, fields: dict[str, Any], code: int) -> int:
        """Write the run's `end` record; return the launcher's exit code."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the end record must not be cut in half
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fields = {"status": fields["status"], **_last_progress(self.metrics), **fields}
        record = append_record(self.metrics, "end", **fields, elapsed_time=hms(time.monotonic() - self.started))
        say(f"end: {record['status']}" + (f" ({record['error']})" if "error" in record else "") + f"; exit {code}")
        return code

    def leave(self, report: NodeReport, code: int) -> int:
        """A node rank > 0: leave the node's report, node rank 0 writes the end record."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        write_node_report(node_report_path(self.ranks_dir, report.node_rank), report)
        say(f"node {report.node_rank} done" + (f" ({report.error})" if report.error else "") + f"; exit {code}")
        return code

    def ended(self, rc: int | None, tail: str = "", error: str | None = None) -> int:
        """This node's torchrun ended with `rc` (None: it never ran, for `error` or a cancel): end accordingly."""
        cancelled = self.forwarder.requested
        own = (
            NodeReport(self.node_rank, error=error, cancelled=cancelled, rendezvous=self.rendezvous)
            if rc is None
            else NodeReport.from_torchrun(self.node_rank, rc, tail, cancelled, self.rendezvous)
        )
        if self.node_rank > 0:
            return self.leave(own, node_exit_code(own))
        if rc is None and self.nnodes == 1:  # torchrun never ran
            if cancelled:
                return self.end({"status": "cancelled", "error": "cancelled (SIGTERM)"}, EXIT_CANCELLED)
            return self.end({"status": "failed", "error": error}, EXIT_FAILED)
        nodes = [own] + self._other_nodes(cancelled)
        logs = gang_rank_logs(self.ranks_dir, self.node, self.nproc)
        reports = gang_rank_reports(
            nodes,
            self.nproc,
            {rank: _read_report(self.ranks_dir / rank_report_file(rank)) for rank in range(self.nnodes * self.nproc)},
            {rank: _tail(path) for rank, path in logs.items()},
        )
        return self.end(*decide_gang_end(reports, nodes, cancelled))

    def _other_nodes(self, cancelled: bool) -> list[NodeReport]:
        """The reports of the other nodes of a job across nodes, waited for a while; none on one node."""
        if self.nnodes == 1:
            return []
        wait = NODE_REPORT_WAIT_CANCELLED_S if cancelled else NODE_REPORT_WAIT_S
        # a second signal: the daemon is about to SIGKILL the launcher, the end record comes first
        nodes = wait_for_node_reports(
            self.ranks_dir, self.nnodes, self.rendezvous, wait, lambda: self.forwarder.received > 1
        )
        if missing := [str(n.node_rank) for n in nodes if not n.reported]:
            say(f"no report from node(s) {', '.join(missing)} within {wait:g} s")
        return nodes


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


def say(message: str) -> None:
    print(f"ftq launcher: {message}", flush=True)
