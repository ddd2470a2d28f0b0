"""The Ray executor against a real Ray cluster on this machine (tests/ray/conftest.py): one agent per node,
fake GPUs from the node label, workers started, watched and adopted through the agents, lost nodes, and
nodes that do not share the daemon's data dir."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from scheduler.local.node_supervisor import Progress
from scheduler.local.supervisor import same_process
from scheduler.policy.placement import NodeShare, Placement
from scheduler.ray.agent import NAMESPACE, agent_name
from scheduler.ray.executor import RayExecutor
from tests.helpers import wait_for
from tests.ray.conftest import NODE_ARGS, Ftq

pytestmark = pytest.mark.ray

_attempt_ids = iter(range(1000, 2000))


def one_node(node: str, gpu_index: int = 0) -> Placement:
    return Placement(1, (f"{node}/GPU-fake-0000-0000-0000-{gpu_index:012d}",), str(gpu_index), node=node)


def worker_nodes(ftq: Ftq) -> list[str]:
    """The usable nodes that are not the daemon's own (the head)."""
    return sorted(s.node for s in ftq.ray.usable() if s.node != ftq.ray.own_node)


class Run:
    """One attempt through the executor, its records gathered poll by poll as the loop would."""

    def __init__(self, executor: RayExecutor, run_dir: Path) -> None:
        self.executor, self.run_dir = executor, run_dir
        self.attempt_id = next(_attempt_ids)
        self.offset, self.records, self.last = 0, [], None

    def start(self, placement: Placement, steps: int, step_s: float) -> list[Any]:
        spec = {"name": "ray-test", "max_steps": steps, "step_s": step_s}
        workers = self.executor.spawn(self.attempt_id, placement, self.run_dir, spec, None)
        assert self.executor.release(self.attempt_id)
        return workers

    def poll(self) -> Progress | None:
        got = self.executor.progress({self.attempt_id: self.offset}).get(self.attempt_id)
        if got is not None:
            self.records += got.records
            self.offset, self.last = got.offset, got
        return got

    def ended(self) -> Progress | None:
        got = self.poll()
        return got if got is not None and got.ended else None


def test_one_agent_per_node_pinned_with_the_fake_gpus_of_its_label(ftq: Ftq) -> None:
    import ray

    usable = ftq.ray.usable()
    assert len(usable) == 3 and not ftq.ray.problems
    for state in usable:
        agent = ray.get_actor(agent_name(state.node, ftq.ray.owner), namespace=NAMESPACE)
        hello = ray.get(agent.hello.remote(str(ftq.ray.marker), ftq.ray.token))
        assert hello["node"] == state.node and hello["marker_problem"] is None
        assert hello["probe"] == f"fake: {NODE_ARGS['labels']['ftq.fake_gpus']}"
    gpus = ftq.probe.snapshot()
    assert len(gpus) == 6 and len({g.uuid for g in gpus}) == 6
    for gpu in gpus:
        assert gpu.uuid.startswith(f"{gpu.node}/GPU-fake-") and gpu.index in (0, 1)
    assert {g.node for g in gpus} == {s.node for s in usable}
    topology = ftq.probe.topology()
    by_node = {g.uuid: g.node for g in gpus}
    assert len(topology) == 6 and all(by_node[a] == by_node[b] for a, b in topology)  # within nodes only
    assert ftq.probe.description.endswith(": 3 nodes, 6 GPUs")
    assert {n["state"] for n in ftq.probe.nodes()} == {"usable"}


def test_a_worker_started_through_an_agent_reports_back(ftq: Ftq, tmp_path: Path) -> None:
    node = worker_nodes(ftq)[0]
    run = Run(ftq.executor, ftq.data_dir / "runs" / "one")
    [worker] = run.start(one_node(node, 1), steps=3, step_s=0.05)
    assert worker.node == node
    ended = wait_for(run.ended, timeout=30, what="the worker's end through progress()")
    assert ended.exit_code == 0 and ended.lost is None and "rank 0 done" in ended.log_tail
    assert [r["kind"] for r in run.records] == ["start", "metric", "metric", "metric", "end"]
    seen = json.loads((run.run_dir / "seen.rank0.json").read_text())
    assert seen["CUDA_VISIBLE_DEVICES"] == "1" and seen["pid"] == worker.pid and seen["FTQ_NNODES"] is None
    ftq.executor.settle(run.attempt_id)
    assert run.attempt_id not in ftq.executor.pids()


def test_a_cpu_job_runs_on_the_daemons_own_node(ftq: Ftq) -> None:
    run = Run(ftq.executor, ftq.data_dir / "runs" / "cpu")
    [worker] = run.start(Placement(1, ("cpu-0",), "", node=""), steps=1, step_s=0.01)
    assert worker.node == ftq.ray.own_node
    assert wait_for(run.ended, timeout=30, what="the CPU job's end").exit_code == 0
    ftq.executor.settle(run.attempt_id)


def test_a_killed_agent_is_restarted_and_adopts_its_running_worker(ftq: Ftq) -> None:
    import ray

    node = worker_nodes(ftq)[1]
    run = Run(ftq.executor, ftq.data_dir / "runs" / "adopted")
    [worker] = run.start(one_node(node), steps=400, step_s=0.05)
    wait_for(lambda: run.poll() and run.records, timeout=30, what="the worker's first record")
    agent = ray.get_actor(agent_name(node, ftq.ray.owner), namespace=NAMESPACE)
    before = ray.get(agent.hello.remote("", ""))["pid"]
    ray.kill(agent, no_restart=False)  # Ray restarts it (max_restarts=-1): a new process, no workers known
    restarted = wait_for(lambda: _pid_of(agent) not in (None, before), timeout=60, what="Ray to restart the agent")
    assert restarted != before
    assert same_process(worker.pid, worker.start_time), "the worker died with its agent"
    seen = len(run.records)
    wait_for(lambda: run.poll() and len(run.records) > seen, timeout=30, what="records after the agent's restart")
    assert run.attempt_id in ray.get(agent.attempt_ids.remote())  # the new agent took it on
    ftq.executor.signal(run.attempt_id, signal.SIGTERM)
    ended = wait_for(run.ended, timeout=30, what="the adopted worker's end")
    assert ended.exit_code is None and ended.lost is None  # an adopted worker's exit code is not ours to know
    ftq.executor.settle(run.attempt_id)
    assert not same_process(worker.pid, worker.start_time)


def test_a_gang_runs_one_worker_per_node_with_the_rendezvous_of_node_rank_0(ftq: Ftq) -> None:
    first, second = worker_nodes(ftq)
    shares = (NodeShare(first, (f"{first}/a",), "0,1"), NodeShare(second, (f"{second}/b",), "0,1"))
    placement = Placement(1, (f"{first}/a", f"{second}/b"), f"{first}:0,1;{second}:0,1", node=first, shares=shares)
    run = Run(ftq.executor, ftq.data_dir / "runs" / "gang")
    workers = run.start(placement, steps=3, step_s=0.05)
    assert [w.node for w in workers] == [first, second]
    ended = wait_for(run.ended, timeout=30, what="the gang's end")
    assert ended.exit_code == 0 and [r["kind"] for r in run.records].count("start") == 1
    seen = [json.loads((run.run_dir / f"seen.rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["FTQ_NODE_RANK"] for s in seen] == ["0", "1"] and {s["FTQ_NNODES"] for s in seen} == {"2"}
    assert seen[0]["FTQ_MASTER_ADDR"] == seen[1]["FTQ_MASTER_ADDR"] == ftq.ray.nodes[first].address
    assert seen[0]["FTQ_MASTER_PORT"] == seen[1]["FTQ_MASTER_PORT"] and int(seen[0]["FTQ_MASTER_PORT"]) > 0
    assert "rank 1 done" in (run.run_dir / "worker.node1.log").read_text()
    assert "rank 1" not in (run.run_dir / "worker.log").read_text()
    ftq.executor.settle(run.attempt_id)


def test_a_node_that_does_not_see_the_data_dir_is_reported_and_not_used(ftq: Ftq) -> None:
    hidden = ftq.ray.marker.with_name("hidden-marker")
    ftq.ray.marker.rename(hidden)  # every node's view of the data dir loses the marker
    try:
        ftq.ray.refresh(wait_s=30)
        problems = ftq.ray.problems
        assert len(problems) == 3 and all(str(ftq.ray.marker) in p and "missing" in p for p in problems.values())
        assert ftq.probe.snapshot() == [] and "3 nodes not used" in ftq.probe.description
        assert {n["state"] for n in ftq.probe.nodes()} == {"unusable"}
        with pytest.raises(RuntimeError, match="cannot take workers"):
            ftq.executor.spawn(next(_attempt_ids), one_node(worker_nodes_any(ftq)), ftq.data_dir / "x", {}, None)
    finally:
        hidden.rename(ftq.ray.marker)
    ftq.ray.refresh(wait_s=30)
    assert len(ftq.ray.usable()) == 3 and not ftq.ray.problems


def test_a_node_that_leaves_the_cluster_loses_its_attempt(ftq: Ftq) -> None:
    node_process = ftq.cluster.add_node(**NODE_ARGS)
    node = node_process.node_id
    wait_for(
        lambda: ftq.ray.refresh(wait_s=5) or node in {s.node for s in ftq.ray.usable()},
        timeout=60,
        what="the new node's agent",
    )
    run = Run(ftq.executor, ftq.data_dir / "runs" / "lost")
    [worker] = run.start(one_node(node), steps=400, step_s=0.05)
    wait_for(lambda: run.poll() and run.records, timeout=30, what="the worker's first record")
    try:
        ftq.cluster.remove_node(node_process)
        ended = wait_for(run.ended, timeout=60, what="the attempt to be reported lost")
        assert ended.lost == f"node lost: node {node[:8]} ({ftq.ray.nodes[node].address}) left the cluster"
        assert ftq.ray.nodes[node].state == "lost" and node not in {g.node for g in ftq.probe.snapshot()}
        ftq.executor.settle(run.attempt_id)  # nothing to ask a lost node; it returns at once
    finally:
        # One machine here: the "lost" node's worker is still ours to stop (on a real cluster it went with it).
        if same_process(worker.pid, worker.start_time):
            os.killpg(worker.pid, signal.SIGKILL)


def worker_nodes_any(ftq: Ftq) -> str:
    return sorted(n for n in ftq.ray.nodes if n != ftq.ray.own_node)[0]


def _pid_of(agent: Any) -> int | None:
    import ray

    try:
        return ray.get(agent.hello.remote("", ""), timeout=5)["pid"]
    except Exception:
        return None


def test_a_backlog_past_one_read_arrives_whole_before_the_worker_is_said_to_have_ended(ftq: Ftq) -> None:
    """Issue 20 through an agent: an ended worker's 5.5 MiB of records come in bounded parts, its end last."""
    run = Run(ftq.executor, ftq.data_dir / "runs" / "backlog")
    [worker] = run.start(one_node(worker_nodes(ftq)[0]), steps=50_000, step_s=0.0)
    wait_for(lambda: not same_process(worker.pid, worker.start_time), timeout=120, what="the worker to write all")
    ended = wait_for(run.ended, timeout=120, what="the backlog's end through progress()")
    assert [r.get("current_steps") for r in run.records] == [0, *range(1, 50_001), 50_000]
    assert ended.exit_code == 0 and not ended.more and run.records[-1]["status"] == "succeeded"
    assert run.offset == (run.run_dir / "metrics.jsonl").stat().st_size
    ftq.executor.settle(run.attempt_id)
