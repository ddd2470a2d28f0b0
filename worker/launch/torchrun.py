"""Multi-GPU jobs: re-run the worker under torchrun, and end the run with one `end` record.

`python -m worker RUN_DIR` for a spec with `gpus > 1`, or with a DeepSpeed config
(which needs a distributed launch even on one GPU, as in LLaMA-Factory), does not
train in its own process. It starts

    python -m torch.distributed.run --standalone --nproc-per-node N -m worker RUN_DIR

and waits. Every rank runs the ordinary recipe (worker.run.recipe); rank 0 writes the
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

from worker.launch.node_report import NodeReport, node_report_path, write_node_report
from worker.launch.nodes import (
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NODE_ENV,
    NODE_REPORT_WAIT_CANCELLED_S,
    NODE_REPORT_WAIT_S,
    NodePlan,
    NodePlanError,
    claimed_node_rank,
    gang_rank_logs,
    node_exit_code,
    node_log_dir,
    node_plan,
    ranks_per_node,
    wait_for_node_reports,
)
from worker.launch.rank_report import RANKS_DIR_ENV, is_rank
from worker.launch.ranks import decide_gang_end, gang_rank_reports
from worker.spec.exits import EXIT_CANCELLED, EXIT_FAILED
from worker.spec.job import JobSpec
from worker.spec.layout import METRICS_FILE, RANKS_DIR, SPEC_FILE, rank_report_file
from worker.spec.records import append_record, hms

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
    rendezvous = f"{env.get(MASTER_ADDR_ENV, '')}:{env.get(MASTER_PORT_ENV, '')}"
    write_node_report(node_report_path(ranks_dir, node_rank), NodeReport(node_rank, error=why, rendezvous=rendezvous))
    _say(f"node {node_rank}: {why}; exit {code}")
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
    forwarder = _Forwarder()
    signal.signal(signal.SIGTERM, forwarder)
    signal.signal(signal.SIGINT, forwarder)
    if cancel_requested():  # a SIGTERM before the forwarder was in place
        forwarder.received += 1

    ranks_dir = run_dir / RANKS_DIR
    ranks_dir.mkdir(exist_ok=True)
    metrics = run_dir / METRICS_FILE
    rendezvous = f"{env.get(MASTER_ADDR_ENV, '')}:{env.get(MASTER_PORT_ENV, '')}"

    def end(fields: dict[str, Any], code: int) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the end record must not be cut in half
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fields = {"status": fields["status"], **_last_progress(metrics), **fields}
        record = append_record(metrics, "end", **fields, elapsed_time=hms(time.monotonic() - started))
        _say(f"end: {record['status']}" + (f" ({record['error']})" if "error" in record else "") + f"; exit {code}")
        return code

    def leave(report: NodeReport, code: int) -> int:  # a node rank > 0: node rank 0 writes the end record
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        write_node_report(node_report_path(ranks_dir, report.node_rank), report)
        _say(f"node {report.node_rank} done" + (f" ({report.error})" if report.error else "") + f"; exit {code}")
        return code

    try:
        node = node_plan(env)
        nproc = ranks_per_node(nproc, node)
    except NodePlanError as exc:
        error = f"cannot launch across nodes: {exc}"
        if claimed_node_rank(env) > 0:
            return leave(NodeReport(claimed_node_rank(env), error=error, rendezvous=rendezvous), EXIT_FAILED)
        return end({"status": "failed", "error": error}, EXIT_FAILED)
    node_rank, nnodes = (0, 1) if node is None else (node.node_rank, node.nnodes)
    first_rank = node_rank * nproc  # torchrun numbers the ranks node by node
    for stale in [ranks_dir / rank_report_file(first_rank + i) for i in range(nproc)] + [
        node_report_path(ranks_dir, node_rank)
    ]:  # this run dir was run before: only this launch's reports count (each node clears its own)
        stale.unlink(missing_ok=True)

    def ended(rc: int | None, tail: str = "", error: str | None = None) -> int:
        cancelled = forwarder.requested
        own = (
            NodeReport(node_rank, error=error, cancelled=cancelled, rendezvous=rendezvous)
            if rc is None
            else NodeReport.from_torchrun(node_rank, rc, tail, cancelled, rendezvous)
        )
        if node_rank > 0:
            return leave(own, node_exit_code(own))
        if rc is None and nnodes == 1:  # torchrun never ran
            if cancelled:
                return end({"status": "cancelled", "error": "cancelled (SIGTERM)"}, EXIT_CANCELLED)
            return end({"status": "failed", "error": error}, EXIT_FAILED)
        nodes = [own]
        if nnodes > 1:
            wait = NODE_REPORT_WAIT_CANCELLED_S if cancelled else NODE_REPORT_WAIT_S
            # a second signal: the daemon is about to SIGKILL the launcher, the end record comes first
            nodes += wait_for_node_reports(ranks_dir, nnodes, rendezvous, wait, lambda: forwarder.received > 1)
            if missing := [str(n.node_rank) for n in nodes if not n.reported]:
                _say(f"no report from node(s) {', '.join(missing)} within {wait:g} s")
        logs = gang_rank_logs(ranks_dir, node, nproc)
        reports = gang_rank_reports(
            nodes,
            nproc,
            {rank: _read_report(ranks_dir / rank_report_file(rank)) for rank in range(nnodes * nproc)},
            {rank: _tail(path) for rank, path in logs.items()},
        )
        return end(*decide_gang_end(reports, nodes, cancelled))

    if forwarder.requested:
        return ended(None)

    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible and len(visible.split(",")) != nproc:
        _say(f"warning: {nproc} ranks but CUDA_VISIBLE_DEVICES={visible}; each rank takes the GPU of its local rank")
    log_dir = node_log_dir(ranks_dir, node)
    argv = torchrun_argv(run_dir, nproc, log_dir, node=node)
    torchrun_env = {
        **env,
        RANKS_DIR_ENV: str(ranks_dir),
        "PYTHONUNBUFFERED": "1",
        # teed lines name the global rank ([rank3]:), not the local one, which every node has
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[${role_name}${rank}]:",
    }
    where = "" if node is None else f" (node {node_rank} of {nnodes}, rendezvous at {node.rendezvous})"
    _say(f"starting {nproc} ranks under torchrun{where}; their logs are kept in {log_dir}")
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
            env=torchrun_env,
            preexec_fn=own_group_dying_with_us,  # safe here: the launcher has started no threads
            close_fds=True,
        )
    except OSError as exc:
        return ended(None, error=f"could not start torchrun: {exc}")
    forwarder.attach(proc)
    assert proc.stdout is not None
    tail = _copy_lines(proc.stdout, TAIL_LINES)
    return ended(proc.wait(), tail)


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
