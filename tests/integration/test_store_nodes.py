"""The store on a Ray cluster, on a real SQLite database (migrated by Alembic): no daemon, no processes.

A lost node requeues the job by its `node_retry` budget, in the finishing transaction; an attempt remembers
its node and, across nodes, every worker, which is what recovery needs to find them again.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update
from sqlmodel import Session, col, select

from scheduler.attempts import begin_attempt, finish_attempt
from scheduler.executor import WorkerRef
from scheduler.policy.exits import Outcome
from scheduler.policy.placement import NodeShare, Placement
from scheduler.policy.states import JobState
from server.db.models import Attempt, Job
from server.db.store import SqlStore
from server.services.paths import read_spec_files
from tests.integration.test_store import job_of, submit

NODE_A, NODE_B = "a" * 56, "b" * 56


def lose_node(store: SqlStore, job_id: int, tmp_path: Path) -> int:
    """One attempt of the job on node A's GPU 0 that ended because node A left the cluster."""
    placement = Placement(job_id, (f"{NODE_A}/GPU-0",), "0", node=NODE_A)
    started = begin_attempt(store, placement, tmp_path / "runs", read_spec_files)
    assert started is not None
    with Session(store.engine) as session:
        session.execute(update(Job).where(col(Job.id) == job_id).values(state=JobState.RUNNING.value))
        session.commit()
    finish_attempt(
        store,
        started.attempt_id,
        Outcome(JobState.FAILED, "node lost: node aaaaaaaa", node_lost=True),
        None,
        "",
        read_spec_files,
    )
    return started.attempt_id


def test_a_lost_node_requeues_the_job_until_its_node_retry_budget_is_spent(store, tmp_path):
    job_id = submit(store, node_retry=2)
    for retry in (1, 2):
        lose_node(store, job_id, tmp_path)
        job = job_of(store, job_id)
        assert (job.state, job.node_retries) == ("queued", retry)
    lose_node(store, job_id, tmp_path)
    job = job_of(store, job_id)
    assert job.state == "failed"
    assert job.reason is not None and "its node_retry budget (2) is spent" in job.reason
    with Session(store.engine) as session:
        attempts = session.exec(select(Attempt).where(Attempt.job_id == job_id)).all()
    assert [a.node for a in attempts] == [NODE_A] * 3
    assert all(a.state == "failed" and a.reason.startswith("node lost") for a in attempts)  # type: ignore[union-attr]


def test_node_retry_zero_fails_the_job_at_the_first_lost_node(store, tmp_path):
    job_id = submit(store, node_retry=0)
    lose_node(store, job_id, tmp_path)
    assert job_of(store, job_id).state == "failed"


def test_a_job_across_nodes_keeps_every_worker_and_recovery_reads_them_back(store, tmp_path):
    job_id = submit(store, gpus=2)
    shares = (NodeShare(NODE_A, (f"{NODE_A}/GPU-0",), "0"), NodeShare(NODE_B, (f"{NODE_B}/GPU-0",), "0"))
    placement = Placement(
        job_id, (f"{NODE_A}/GPU-0", f"{NODE_B}/GPU-0"), f"{NODE_A}:0;{NODE_B}:0", node=NODE_A, shares=shares
    )
    started = begin_attempt(store, placement, tmp_path / "runs", read_spec_files)
    assert started is not None
    workers = [WorkerRef(NODE_A, 101, 5), WorkerRef(NODE_B, 101, 7)]  # one pid on two machines: two processes
    store.attempt_spawned(started.attempt_id, 101, 5, workers)
    [live] = store.live_attempts()
    assert live.node == NODE_A
    assert list(live.workers) == workers
    assert live.nodes == [NODE_A, NODE_B]
    assert store.leased_resources() == {f"{NODE_A}/GPU-0", f"{NODE_B}/GPU-0"}
