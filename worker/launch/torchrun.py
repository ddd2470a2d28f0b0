"""Multi-GPU jobs: re-run the worker under torchrun, and end the run with one `end` record.

`python -m worker RUN_DIR` for a spec with `gpus > 1`, or with a DeepSpeed config
(which needs a distributed launch even on one GPU, as in LLaMA-Factory), does not
train in its own process. It starts

    python -m torch.distributed.run --standalone --nproc-per-node N -m worker RUN_DIR

and waits. Every rank runs the ordinary recipe (worker.run.recipe); rank 0 writes the
`start` record and the progress records. The `end` record is written by the
launcher, once, from what every rank reported (worker.launch.ending); torchrun runs
in a process group of its own that dies with the launcher (worker.launch.processes).

With `--standalone` torchrun binds its rendezvous store to port 0, so the kernel
picks a free port and two jobs started at the same moment cannot collide; the
ranks' own gloo/NCCL sockets are ephemeral too.

A job larger than one node runs as one torchrun job over K nodes, as
LLaMA-Factory's launcher runs one (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT).
The executor starts one `python -m worker RUN_DIR` per node, the run dir shared
by all (the same path), with FTQ_NNODES, FTQ_NODE_RANK, FTQ_MASTER_ADDR and
FTQ_MASTER_PORT (node_plan). Each launcher starts its node's spec.gpus // K ranks
under

    torchrun --nnodes K --node-rank R --master-addr A --master-port P ...

a static rendezvous: node rank 0's torchrun hosts a c10d TCPStore at A:P, the
others connect to it, and global rank = R * (gpus // K) + local rank. Not
`--rdzv-backend=c10d`: it numbers the nodes in the order they join, so which
launcher has global rank 0 on its node, the one that writes the records, would
not be known in advance. Global rank 0 writes `start` and the progress records,
as in one node. A launcher of node rank R > 0 writes no `end` record: it leaves
what its torchrun said in RUN_DIR/ranks/node-R.json and exits with torchrun's
code. The launcher of node rank 0, once its own torchrun has ended, waits a
little for those files, then writes the one `end` record from every rank's
report and every node's torchrun (worker.launch.ranks.decide_gang_end). Each node's
torchrun keeps its ranks' logs under RUN_DIR/ranks/node<R>/, so that two nodes'
local rank 0 never share a log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import ValidationError

from worker.launch.ending import Ending, say
from worker.launch.node_report import NodeReport, node_report_path, write_node_report
from worker.launch.nodes import (
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NODE_ENV,
    NodePlan,
    NodePlanError,
    claimed_node_rank,
    node_log_dir,
    node_plan,
    ranks_per_node,
)
from worker.launch.processes import Forwarder, copy_lines, start_torchrun
from worker.launch.rank_report import RANKS_DIR_ENV, is_rank
from worker.spec.exits import EXIT_FAILED
from worker.spec.job import JobSpec
from worker.spec.layout import METRICS_FILE, RANKS_DIR, SPEC_FILE, rank_report_file

TAIL_LINES = 400  # torchrun output kept in memory to read its failure table
# How long torchrun lets the ranks stop on its SIGTERM before it kills them. A rank blocked in a collective or in
# the rendezvous (waiting for a peer that was cancelled before it joined) cannot run its handler at all; this
# bound, below the daemon's default cancel grace (FTQ_CANCEL_GRACE_S, 10 s), leaves the launcher time to write
# the end record before the daemon's SIGKILL. A cancel saves a checkpoint at the ranks' next step boundary: a LoRA
# adapter fits well within this; the optimizer state of a large full fine-tune may not, and a save cut short here
# leaves a checkpoint without its trainer_state.json, which the next attempt passes over for the one before.
RANK_SHUTDOWN_S = 5


# ---- deciding --------------------------------------------------------------------------------------------------


def launch_plan(spec: JobSpec | None, env: Mapping[str, str]) -> int | None:
    """How many ranks to start under torchrun, or None to train in this process.

    A spec that does not validate trains in-process: the recipe reports it with
    every other problem, exactly as for a one-GPU job.
    """
    if spec is None or is_rank(env):
        return None
    if spec.gpus > 1 or spec.deepspeed is not None or any(key in env for key in NODE_ENV):
        return max(spec.gpus, 1)
    return None


SPEC_INVALID_ASIDE = "the job's spec does not validate; node 0 reports why"


def stand_aside(run_dir: Path, env: Mapping[str, str], why: str, code: int) -> int | None:
    """What a node rank > 0 of a job across nodes does when it will not launch: leave the word to node rank 0.

    Its spec did not validate (node rank 0 trains in its own process, where the recipe reports every
    problem in the one `end` record), or its daemon went away before the go: this node writes no `end`
    record, only its node report saying `why`, and exits with `code`. None when this process is not such a
    node (it then does what a worker on one node does).
    """
    node_rank = claimed_node_rank(env)
    if is_rank(env) or node_rank == 0 or not any(key in env for key in NODE_ENV):
        return None
    ranks_dir = run_dir / RANKS_DIR
    ranks_dir.mkdir(exist_ok=True)
    write_node_report(
        node_report_path(ranks_dir, node_rank), NodeReport(node_rank, error=why, rendezvous=_rendezvous(env))
    )
    say(f"node {node_rank}: {why}; exit {code}")
    return code


def read_spec(run_dir: Path) -> JobSpec | None:
    """The spec if RUN_DIR/spec.json holds a valid one, else None (without a word: the recipe says why)."""
    try:
        return JobSpec.model_validate(json.loads((run_dir / SPEC_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError):
        return None


def torchrun_argv(
    run_dir: Path, nproc: int, log_dir: Path, python: str = sys.executable, node: NodePlan | None = None
) -> list[str]:
    """The torchrun command line, every rank's output kept and teed.

    One node: standalone (a free port of its own). Across nodes: a static rendezvous at node rank 0
    (see the module's docstring), `nproc` ranks on this node.
    """
    if node is None:
        rendezvous = ["--standalone", "--nnodes", "1"]
    else:
        rendezvous = [
            "--nnodes", str(node.nnodes),
            "--node-rank", str(node.node_rank),
            "--master-addr", node.master_addr,
            "--master-port", str(node.master_port),
        ]  # fmt: skip
    return [
        python, "-m", "torch.distributed.run",
        *rendezvous,
        "--nproc-per-node", str(nproc),
        "--max-restarts", "0",  # a failed attempt is the daemon's to requeue, with its reason
        "--shutdown-timeout", str(RANK_SHUTDOWN_S),
        "--role", "rank",  # torchrun prefixes teed lines with [<role><local rank>]: -> [rank0]:
        "--log-dir", str(log_dir),
        "--redirects", "3",
        "--tee", "3",
        "-m", "worker", str(run_dir),
    ]  # fmt: skip


# ---- the launcher ------------------------------------------------------------------------------------------------


def launch(
    run_dir: Path,
    nproc: int,
    cancel_requested: Callable[[], bool] = lambda: False,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run the job in RUN_DIR as `nproc` ranks under torchrun; return the exit code.

    On one node, or on node rank 0 of a job across nodes, write its `end` record; on any other node,
    leave the node's report for node rank 0 instead.
    """
    env = os.environ if env is None else env
    started = time.monotonic()
    run_dir = run_dir.resolve()
    forwarder = Forwarder()
    signal.signal(signal.SIGTERM, forwarder)
    signal.signal(signal.SIGINT, forwarder)
    if cancel_requested():  # a SIGTERM before the forwarder was in place
        forwarder.received += 1
    ranks_dir = run_dir / RANKS_DIR
    ranks_dir.mkdir(exist_ok=True)
    ending = Ending(run_dir / METRICS_FILE, ranks_dir, _rendezvous(env), started, forwarder)

    try:
        node = node_plan(env)
        nproc = ranks_per_node(nproc, node)
    except NodePlanError as exc:
        error = f"cannot launch across nodes: {exc}"
        if claimed_node_rank(env) > 0:
            own = NodeReport(claimed_node_rank(env), error=error, rendezvous=ending.rendezvous)
            return ending.leave(own, EXIT_FAILED)
        return ending.end({"status": "failed", "error": error}, EXIT_FAILED)
    ending = dataclasses.replace(ending, node=node, nproc=nproc)
    _clear_stale_reports(ranks_dir, ending.node_rank, nproc)
    if forwarder.requested:
        return ending.ended(None)

    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible and len(visible.split(",")) != nproc:
        say(f"warning: {nproc} ranks but CUDA_VISIBLE_DEVICES={visible}; each rank takes the GPU of its local rank")
    log_dir = node_log_dir(ranks_dir, node)
    where = "" if node is None else f" (node {node.node_rank} of {node.nnodes}, rendezvous at {node.rendezvous})"
    say(f"starting {nproc} ranks under torchrun{where}; their logs are kept in {log_dir}")
    try:
        proc = start_torchrun(torchrun_argv(run_dir, nproc, log_dir, node=node), torchrun_env(env, ranks_dir))
    except OSError as exc:
        return ending.ended(None, error=f"could not start torchrun: {exc}")
    forwarder.attach(proc)
    assert proc.stdout is not None
    tail = copy_lines(proc.stdout, TAIL_LINES)
    return ending.ended(proc.wait(), tail)


def torchrun_env(env: Mapping[str, str], ranks_dir: Path) -> dict[str, str]:
    """The launcher's environment, and where the ranks report."""
    return {
        **env,
        RANKS_DIR_ENV: str(ranks_dir),
        "PYTHONUNBUFFERED": "1",
        # teed lines name the global rank ([rank3]:), not the local one, which every node has
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[${role_name}${rank}]:",
    }


def _clear_stale_reports(ranks_dir: Path, node_rank: int, nproc: int) -> None:
    """This run dir was run before: only this launch's reports count (each node clears its own)."""
    first_rank = node_rank * nproc  # torchrun numbers the ranks node by node
    for stale in [ranks_dir / rank_report_file(first_rank + i) for i in range(nproc)]:
        stale.unlink(missing_ok=True)
    node_report_path(ranks_dir, node_rank).unlink(missing_ok=True)


def _rendezvous(env: Mapping[str, str]) -> str:
    """MASTER_ADDR:MASTER_PORT as the executor gave them, which names this launch in the node reports."""
    return f"{env.get(MASTER_ADDR_ENV, '')}:{env.get(MASTER_PORT_ENV, '')}"
