"""A job across nodes: this node's part of it, and what the launcher of node rank 0 gathers from the others.

The executor starts one `python -m worker RUN_DIR` per node of a gang, the run
dir shared by all, with FTQ_NNODES, FTQ_NODE_RANK, FTQ_MASTER_ADDR and
FTQ_MASTER_PORT (what LLaMA-Factory's launcher reads as NNODES, NODE_RANK,
MASTER_ADDR, MASTER_PORT). worker.launch.torchrun reads them here (node_plan), and its
launcher of node rank 0 reads the other nodes' reports and every rank's log
from here. Without torch, as the launcher is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from worker.launch.node_report import NodeReport, node_report_path, read_node_report
from worker.spec.exits import EXIT_CANCELLED, EXIT_FAILED
from worker.spec.layout import node_log_dir_name

# How long the launcher of node rank 0, its own torchrun ended, waits for the other nodes' reports: their torchruns
# end about together (they share the ranks' collectives), but a shared filesystem may show a new file late. After a
# cancel only briefly, so that the end record is written within the daemon's cancel grace.
NODE_REPORT_WAIT_S = 30.0
NODE_REPORT_WAIT_CANCELLED_S = 3.0

# A job across nodes: what the executor tells each node's worker (all four, or none for a job on one node).
NNODES_ENV = "FTQ_NNODES"
NODE_RANK_ENV = "FTQ_NODE_RANK"
MASTER_ADDR_ENV = "FTQ_MASTER_ADDR"
MASTER_PORT_ENV = "FTQ_MASTER_PORT"
NODE_ENV = (NNODES_ENV, NODE_RANK_ENV, MASTER_ADDR_ENV, MASTER_PORT_ENV)


class NodePlanError(ValueError):
    """The FTQ_ variables of a job across nodes are missing or malformed: the message names each one."""


@dataclass(frozen=True)
class NodePlan:
    """This node's part of a job across nodes, as the executor gave it."""

    nnodes: int
    node_rank: int
    master_addr: str  # where node rank 0's torchrun hosts the rendezvous store
    master_port: int

    @property
    def rendezvous(self) -> str:
        """A:P, which names this launch in the node reports (one of an earlier run here is not this one's)."""
        return f"{self.master_addr}:{self.master_port}"


def node_plan(env: Mapping[str, str]) -> NodePlan | None:
    """This node's part of a job across nodes from FTQ_NNODES, FTQ_NODE_RANK, FTQ_MASTER_ADDR, FTQ_MASTER_PORT.

    None when none of them is set (a job on one node). Every problem is named at once.
    """
    if not any(key in env for key in NODE_ENV):
        return None
    problems = [
        f"{key} is not set (a job across nodes needs all of {', '.join(NODE_ENV)})"
        for key in NODE_ENV
        if key not in env
    ]
    nnodes = _whole_number(env, NNODES_ENV, 1, problems)
    node_rank = _whole_number(env, NODE_RANK_ENV, 0, problems)
    port = _whole_number(env, MASTER_PORT_ENV, 1, problems)
    addr = env.get(MASTER_ADDR_ENV)
    if addr is not None and (not addr or any(c.isspace() for c in addr)):
        problems.append(f"{MASTER_ADDR_ENV}={addr!r} is not a host name or address (that of node rank 0)")
    if nnodes is not None and node_rank is not None and node_rank >= nnodes:
        problems.append(f"{NODE_RANK_ENV}={node_rank} must be below {NNODES_ENV}={nnodes}")
    if port is not None and port > 65535:
        problems.append(f"{MASTER_PORT_ENV}={port} is not a port (1 to 65535)")
    if problems:
        raise NodePlanError("; ".join(problems))
    assert nnodes is not None and node_rank is not None and addr is not None and port is not None
    return NodePlan(nnodes, node_rank, addr, port)


def _whole_number(env: Mapping[str, str], key: str, least: int, problems: list[str]) -> int | None:
    if key not in env:
        return None
    text = env[key]
    if not text.strip().isdigit() or int(text) < least:
        problems.append(f"{key}={text!r} is not a whole number of at least {least}")
        return None
    return int(text)


def ranks_per_node(nproc: int, node: NodePlan | None) -> int:
    """How many of the job's `nproc` ranks run on each node: all of them, or an even share of a job across nodes."""
    if node is None:
        return nproc
    if nproc % node.nnodes:
        raise NodePlanError(f"the job's {nproc} GPU(s) do not split evenly over {NNODES_ENV}={node.nnodes} nodes")
    return nproc // node.nnodes


def claimed_node_rank(env: Mapping[str, str]) -> int:
    """The node rank FTQ_NODE_RANK says, however wrong the rest is; 0 (the node that reports) when it says none."""
    text = env.get(NODE_RANK_ENV, "").strip()
    return int(text) if text.isdigit() else 0


def node_log_dir(ranks_dir: Path, node: NodePlan | None) -> Path:
    """Where this node's torchrun keeps its ranks' logs: a folder per node, so that two nodes never share one."""
    return ranks_dir if node is None else ranks_dir / node_log_dir_name(node.node_rank)


def node_exit_code(report: NodeReport) -> int:
    """A launcher's exit code from its node's part: torchrun's own (a signal as a shell reports it), or why none."""
    if report.cancelled:
        return EXIT_CANCELLED
    if report.exit_code is None:
        return EXIT_FAILED
    return report.exit_code if report.exit_code >= 0 else 128 - report.exit_code


def wait_for_node_reports(
    ranks_dir: Path, nnodes: int, rendezvous: str, timeout: float, give_up: Callable[[], bool] = lambda: False
) -> list[NodeReport]:
    """Nodes 1..K-1's reports, waited for up to `timeout` s (or until give_up()); a missing one reads as such."""
    deadline = time.monotonic() + timeout
    while True:
        reports = [read_node_report(node_report_path(ranks_dir, r), r, rendezvous) for r in range(1, nnodes)]
        if all(r.reported for r in reports) or time.monotonic() >= deadline or give_up():
            return reports
        time.sleep(0.2)


def rank_logs(log_dir: Path, first_rank: int = 0) -> dict[int, Path]:
    """rank -> its stderr log, from torchrun's newest run under log_dir (<rdzv id>_*/attempt_N/<local rank>/).

    torchrun names the folders by local rank: `first_rank` (the node's first global rank) makes them global.
    """
    attempts = sorted(log_dir.glob("*/attempt_*"), key=lambda p: p.stat().st_mtime)
    if not attempts:
        return {}
    logs = {first_rank + int(d.name): d / "stderr.log" for d in attempts[-1].iterdir() if d.name.isdigit()}
    return {rank: path for rank, path in logs.items() if path.exists()}


def gang_rank_logs(ranks_dir: Path, node: NodePlan | None, nproc: int) -> dict[int, Path]:
    """Every rank's log, whichever node's torchrun kept it (global rank -> its stderr log)."""
    if node is None:
        return rank_logs(ranks_dir)
    logs: dict[int, Path] = {}
    for r in range(node.nnodes):
        logs.update(rank_logs(ranks_dir / f"node{r}", first_rank=r * nproc))
    return logs
