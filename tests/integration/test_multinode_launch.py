"""A job across nodes as the executor starts it: one `python -m worker RUN_DIR` per node on a shared run dir.

Both "nodes" are this machine: spawn_worker with each node's FTQ_NNODES, FTQ_NODE_RANK, FTQ_MASTER_ADDR and
FTQ_MASTER_PORT (as the node agents call it), the start gates released, and two torchruns that meet in a static
rendezvous at 127.0.0.1 and train one rank each, on CPU over gloo. What must hold is what holds on one node:
one `start`, progress written once, one `end` that every rank's fate went into, no process left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.local.supervisor import WorkerProcess, release, spawn_worker
from tests.integration.test_multigpu import job_processes
from tests.integration.test_worker import DATA_DIR, MODEL_DIR, records, wait_for
from worker.spec.exits import EXIT_CANCELLED, EXIT_NOT_STARTED, EXIT_OOM
from worker.spec.gate import NOT_STARTED
from worker.spec.layout import LOG_FILE, RANKS_DIR

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds a job's processes through /proc"),
]

NODES = 2


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """The shipped tiny model, 2 steps, on 2 GPUs: with 2 nodes, one rank on each."""
    return {
        "name": "tiny",
        "gpus": 2,
        "model_name_or_path": str(MODEL_DIR),
        "dataset": "cs_billing",
        "dataset_dir": str(DATA_DIR),
        "cutoff_len": 128,
        "per_device_train_batch_size": 2,
        "learning_rate": 0.01,
        "max_steps": 2,
        "logging_steps": 1,
        "save_steps": 100,
        "lr_scheduler_type": "constant",
        **overrides,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_log(node_rank: int) -> str:
    return LOG_FILE if node_rank == 0 else f"worker.node{node_rank}.log"


@pytest.fixture
def start_nodes() -> Iterator[Callable[..., list[WorkerProcess]]]:
    """Start a job's worker on every node as the node agents would, release them, and kill what a test leaves."""
    started: list[WorkerProcess] = []

    def start(
        run_dir: Path,
        spec: dict[str, Any],
        env_of: Callable[[int], dict[str, str]] = lambda r: {},
        go: bool = True,
    ) -> list[WorkerProcess]:
        port = free_port()
        workers = []
        for node_rank in range(NODES):
            extra = {
                "FTQ_NNODES": str(NODES),
                "FTQ_NODE_RANK": str(node_rank),
                "FTQ_MASTER_ADDR": "127.0.0.1",
                "FTQ_MASTER_PORT": str(port),
                **env_of(node_rank),
            }
            worker = spawn_worker(
                1, run_dir, spec, cuda_visible_devices="0", extra_env=extra, log_name=node_log(node_rank)
            )
            started.append(worker)
            workers.append(worker)
        for worker in workers:
            if go:
                assert release(worker)
            else:  # the pipe closes unsaid, as when the daemon dies before the go
                assert worker.popen is not None and worker.popen.stdin is not None
                worker.popen.stdin.close()
        return workers

    yield start
    for worker in started:
        if worker.popen is not None and worker.popen.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.popen.wait()


def logs_of(run_dir: Path) -> str:
    return "\n".join(
        f"--- {node_log(r)}\n" + (run_dir / node_log(r)).read_text(errors="replace")[-3000:] for r in range(NODES)
    )


def wait_all(workers: list[WorkerProcess], run_dir: Path) -> list[int]:
    codes = []
    for worker in workers:
        assert worker.popen is not None
        codes.append(worker.popen.wait(timeout=300))
    wait_for(lambda: not job_processes(run_dir), timeout=10)  # torchrun and the ranks are gone with them
    return codes


def test_two_nodes_train_as_one_job_and_it_is_recorded_once(tmp_path: Path, start_nodes) -> None:
    run_dir = tmp_path / "job" / "attempt-1"

    workers = start_nodes(run_dir, tiny_spec())

    assert wait_all(workers, run_dir) == [0, 0], logs_of(run_dir)
    found = records(run_dir)
    assert [r["kind"] for r in found] == ["start", "metric", "metric", "checkpoint", "end"], logs_of(run_dir)
    start, end = found[0], found[-1]
    assert start["world_size"] == 2 and start["cuda_visible_devices"] == "0"
    assert [r["current_steps"] for r in found if r["kind"] == "metric"] == [1, 2]  # rank 0 alone writes them
    assert end["status"] == "succeeded" and end["current_steps"] == end["total_steps"] == 2 and "error" not in end

    # Each node's launcher has its own log, and each node's torchrun its own folder of rank logs.
    assert "ftq launcher: end: succeeded" in (run_dir / LOG_FILE).read_text()
    node1 = (run_dir / "worker.node1.log").read_text()
    assert "ftq launcher: node 1 done; exit 0" in node1 and "[rank1]:" in node1  # teed lines name the global rank
    for node_rank in range(NODES):
        (rank_log,) = (run_dir / RANKS_DIR / f"node{node_rank}").glob("*/attempt_0/0/stderr.log")
        assert "trainable params" in rank_log.read_text()
    report = json.loads((run_dir / RANKS_DIR / "node-1.json").read_text())
    assert report["exit_code"] == 0 and not report["cancelled"] and report["error"] is None
    assert {p.name for p in (run_dir / RANKS_DIR).glob("rank-*.json")} == {"rank-0.json", "rank-1.json"}


def test_an_oom_on_the_rank_of_node_1_ends_the_job_oom_naming_it(tmp_path: Path, start_nodes) -> None:
    run_dir = tmp_path / "job" / "attempt-1"

    # only node 1 is told to fail: its rank (global rank 1) runs out of memory in step 2
    workers = start_nodes(run_dir, tiny_spec(), lambda r: {"FTQ_FAULT": "oom@step:2@rank:1"} if r == 1 else {})

    codes = wait_all(workers, run_dir)
    assert codes[0] == EXIT_OOM and codes[1] != 0, logs_of(run_dir)
    kinds = [r["kind"] for r in records(run_dir)]
    assert kinds.count("end") == 1 and kinds[-1] == "end" and kinds.count("start") == 1, kinds
    end = records(run_dir)[-1]
    assert end["status"] == "oom" and end["current_steps"] == 1
    assert end["error"].startswith("rank 1: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"), end
    assert end["tried_to_allocate_bytes"] == 2 << 30
    assert json.loads((run_dir / RANKS_DIR / "node-1.json").read_text())["exit_code"] != 0


def test_workers_whose_daemon_went_away_before_the_go_leave_one_not_started_record(tmp_path: Path, start_nodes) -> None:
    # The gate fails on every node alike; node rank 0 alone writes the record, node 1 tells it why.
    run_dir = tmp_path / "job" / "attempt-1"

    workers = start_nodes(run_dir, tiny_spec(), go=False)

    assert [w.popen.wait(timeout=60) for w in workers] == [EXIT_NOT_STARTED] * NODES, logs_of(run_dir)
    (end,) = records(run_dir)
    assert end["kind"] == "end" and end["status"] == "not_started"
    report = json.loads((run_dir / RANKS_DIR / "node-1.json").read_text())
    assert report["error"] == NOT_STARTED and report["exit_code"] is None


def test_a_cancel_sent_to_every_node_ends_the_job_cancelled_once(tmp_path: Path, start_nodes) -> None:
    run_dir = tmp_path / "job" / "attempt-1"
    workers = start_nodes(run_dir, tiny_spec(max_steps=5000))
    wait_for(lambda: any(r["kind"] == "metric" for r in records(run_dir)) or workers[0].popen.poll() is not None, 240)
    assert all(w.popen.poll() is None for w in workers), logs_of(run_dir)

    for worker in workers:  # each node's agent signals its own worker's group
        os.killpg(worker.pid, signal.SIGTERM)

    assert wait_all(workers, run_dir) == [EXIT_CANCELLED] * NODES, logs_of(run_dir)
    kinds = [r["kind"] for r in records(run_dir)]
    assert kinds.count("end") == 1 and kinds[-1] == "end", kinds
    end = records(run_dir)[-1]
    assert end["status"] == "cancelled" and 1 <= end["current_steps"] < 5000
    assert json.loads((run_dir / RANKS_DIR / "node-1.json").read_text())["cancelled"]
