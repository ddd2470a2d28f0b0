"""The daemon on a real Ray cluster (FTQ_RAY_ADDRESS): real workers training the tiny model on the nodes' agents.

A cluster of its own for this module (ray.cluster_utils.Cluster on this machine): a head without GPUs (the
daemon's own node, its CPU slot) and two nodes with two fake GPUs each (the ftq.fake_gpus label). Every node
sees the data dir at the same path, as a shared filesystem gives it. The last test removes a node.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="the Ray tests need ray: pip install 'ftq[ray]'")

from tests.helpers import tiny_spec, wait_for  # noqa: E402
from tests.integration.daemon import Daemon, process_group_alive  # noqa: E402
from tests.ray.cluster import ray_cluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.integration]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with ray_cluster(nodes=2, node_gpus="2x24GiB") as started:
        yield started


@pytest.fixture
def daemon(cluster: Any, tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(tmp_path / "ftq", ray_address=cluster.address, cancel_grace_s="5").start(timeout=180)
    try:
        yield running
    finally:
        running.stop()
        running.kill_workers()


def attempts(daemon: Daemon, job_id: int) -> list[dict[str, Any]]:
    return daemon.job(job_id)["attempts"]


def start_record(daemon: Daemon, job_id: int) -> dict[str, Any]:
    return daemon.metrics(job_id, kind="start")[-1]


def test_gpus_shows_every_node_and_jobs_spread_over_them_with_each_node_s_own_gpu_numbers(daemon: Daemon):
    view = daemon.http.get("/gpus").json()
    usable = {n["node"] for n in view["nodes"] if n["state"] == "usable"}
    assert len(view["nodes"]) == 3 and len(usable) == 3, view["nodes"]
    gpu_nodes = Counter(g["node"] for g in view["gpus"])
    assert sorted(gpu_nodes.values()) == [2, 2] and all(g["uuid"].startswith(g["node"] + "/") for g in view["gpus"])

    ids = [daemon.submit(tiny_spec(name=f"line-{i}", max_steps=4))["id"] for i in range(3)]
    for job_id in ids:
        job = wait_for(lambda j=job_id: daemon.ended(j), timeout=300, interval=0.5, what=f"job {job_id} to end")
        assert job["state"] == "succeeded", job
    placed = [(a["node"], a["cuda_visible_devices"]) for a in (attempts(daemon, j)[0] for j in ids)]
    assert len({node for node, _ in placed}) == 2, placed  # three one-GPU jobs over two nodes of two
    assert len(set(placed)) == 3, placed  # never one GPU of one node twice
    by_node = Counter(node for node, _ in placed)
    assert sorted(by_node.values()) == [1, 2]
    for job_id, (_, visible) in zip(ids, placed, strict=True):
        assert start_record(daemon, job_id)["cuda_visible_devices"] == visible  # set by ftq, as the worker saw it


def test_a_job_larger_than_a_node_runs_across_two_nodes_under_torchrun(daemon: Daemon):
    job_id = daemon.submit(tiny_spec(name="gang", gpus=4, max_steps=4, per_device_train_batch_size=2))["id"]
    job = wait_for(lambda: daemon.ended(job_id), timeout=400, interval=0.5, what="the job across nodes to end")
    assert job["state"] == "succeeded", job
    [attempt] = job["attempts"]
    visible = attempt["cuda_visible_devices"]
    assert len(visible.split(";")) == 2 and all(part.endswith(":0,1") for part in visible.split(";")), visible
    assert start_record(daemon, job_id)["world_size"] == 4
    steps = Counter(r["current_steps"] for r in daemon.metrics(job_id, kind="metric"))
    assert set(steps.values()) == {1}, steps  # node rank 0 alone writes the records
    assert [r["kind"] for r in daemon.metrics(job_id)].count("end") == 1
    run_dir = Path(attempt["run_dir"])
    assert (run_dir / "worker.log").exists() and (run_dir / "worker.node1.log").exists()


def test_kill_9_the_daemon_and_a_new_one_re_adopts_the_workers_through_the_agents(daemon: Daemon):
    job_id = daemon.submit(tiny_spec(name="long", max_steps=120))["id"]
    wait_for(lambda: daemon.metrics(job_id, kind="metric"), timeout=180, what="the job to train")
    pid = attempts(daemon, job_id)[0]["pid"]
    daemon.stop(signal.SIGKILL)
    assert process_group_alive(pid)  # the worker trains on while no daemon watches
    daemon.start(timeout=180)
    job = wait_for(lambda: daemon.ended(job_id), timeout=400, interval=0.5, what="the adopted job to end")
    assert job["state"] == "succeeded", job
    assert len(job["attempts"]) == 1 and job["attempts"][0]["adopted"], job["attempts"]
    steps = Counter(r["current_steps"] for r in daemon.metrics(job_id, kind="metric"))
    assert sorted(steps) == list(range(2, 121, 2)) and set(steps.values()) == {1}, steps  # each step once


def test_a_killed_agent_is_restarted_and_its_worker_trains_on_in_the_same_attempt(cluster: Any, daemon: Daemon):
    import ray

    from scheduler.ray.agent import NAMESPACE, agent_name, owner_of

    job_id = daemon.submit(tiny_spec(name="kept", max_steps=300))["id"]
    wait_for(lambda: daemon.metrics(job_id, kind="metric"), timeout=180, what="the job to train")
    attempt = attempts(daemon, job_id)[0]
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        agent = ray.get_actor(agent_name(attempt["node"], owner_of(daemon.data_dir)), namespace=NAMESPACE)
        ray.kill(agent, no_restart=False)  # Ray starts it again; the daemon has it adopt the worker
    finally:
        ray.shutdown()
    at_kill = max(r["current_steps"] for r in daemon.metrics(job_id, kind="metric"))
    assert at_kill < 300
    job = wait_for(lambda: daemon.ended(job_id), timeout=400, interval=0.5, what="the job to end")
    assert job["state"] == "succeeded", job
    assert len(job["attempts"]) == 1 and job["attempts"][0]["pid"] == attempt["pid"], job["attempts"]
    steps = Counter(r["current_steps"] for r in daemon.metrics(job_id, kind="metric"))
    assert sorted(steps) == list(range(2, 301, 2)) and set(steps.values()) == {1}, steps  # on past the kill


def test_a_node_lost_mid_job_fails_the_attempt_and_the_job_resumes_on_the_other_node(cluster: Any, daemon: Daemon):
    job_id = daemon.submit(tiny_spec(name="moved", max_steps=400, save_steps=10))["id"]
    wait_for(lambda: daemon.metrics(job_id, kind="checkpoint"), timeout=240, what="a first checkpoint")
    first = attempts(daemon, job_id)[0]
    [node] = [n for n in cluster.list_all_nodes() if n.node_id == first["node"]]
    # The machine dies: its Ray processes (the agent among them), then the worker, as the machine's end takes it.
    # On one machine the worker would outlive its node: it is killed once the daemon has seen the node go.
    cluster.remove_node(node)

    def node_state() -> str | None:
        nodes = daemon.http.get("/gpus").json()["nodes"]
        return next((n["state"] for n in nodes if n["node"] == first["node"] and n["state"] == "lost"), None)

    wait_for(node_state, timeout=60, what="the daemon to see the node lost")
    os.killpg(first["pid"], signal.SIGKILL)
    job = wait_for(lambda: daemon.ended(job_id), timeout=400, interval=0.5, what="the job to end elsewhere")
    assert job["state"] == "succeeded", (job, daemon.log()[-4000:])
    lost, resumed = job["attempts"]
    assert lost["state"] == "failed" and lost["reason"].startswith("node lost"), lost
    assert resumed["node"] != lost["node"] and resumed["resumed_from_step"] >= 10, resumed
    view = daemon.http.get("/gpus").json()
    assert [n["state"] for n in view["nodes"] if n["node"] == lost["node"]] == ["lost"]
    assert all(g["node"] != lost["node"] for g in view["gpus"])
    health = daemon.http.get("/healthz").json()
    assert health["status"] == "ok" and any(lost["node"][:8] in w for w in health["warnings"]), health


def test_a_node_that_joins_gets_an_agent_and_its_gpu_takes_a_job(cluster: Any, daemon: Daemon):
    before = {n["node"] for n in daemon.http.get("/gpus").json()["nodes"]}
    cluster.add_node(num_cpus=1, object_store_memory=80 << 20, labels={"ftq.fake_gpus": "1x80GiB"})

    def joined() -> str | None:
        nodes = daemon.http.get("/gpus").json()["nodes"]
        return next((n["node"] for n in nodes if n["node"] not in before and n["state"] == "usable"), None)

    new = wait_for(joined, timeout=120, what="the new node's agent")
    gpus = [g for g in daemon.http.get("/gpus").json()["gpus"] if g["node"] == new]
    assert [(g["index"], g["memory_total"]) for g in gpus] == [(0, 80 << 30)]
    # Best fit: of the nodes whose free GPUs can take it, the one with the fewest, the new one's single GPU.
    job_id = daemon.submit(tiny_spec(name="newcomer", max_steps=4))["id"]
    job = wait_for(lambda: daemon.ended(job_id), timeout=300, interval=0.5, what="the job to end")
    assert job["state"] == "succeeded", job
    assert job["attempts"][0]["node"] == new
