"""A real Ray cluster on this machine for the Ray tests: a head and two nodes, each labelled with two fake
GPUs (ftq.fake_gpus=2x24GiB), small CPU and object store, started once for the session.

The test process is the daemon's side (the Ray driver); the agents run in the nodes' worker processes,
which inherit this environment (PYTHONPATH with the repo, so that they import scheduler and tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="the Ray tests need ray: pip install 'ftq[ray]'")

from scheduler.ray.agent import FAKE_GPUS_LABEL  # noqa: E402
from scheduler.ray.cluster import RayCluster  # noqa: E402
from scheduler.ray.executor import RayExecutor  # noqa: E402
from scheduler.ray.probe import RayProbe  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NODE_GPUS = "2x24GiB"
NODE_ARGS: dict[str, Any] = {
    "num_cpus": 1,
    "object_store_memory": 80 << 20,
    "labels": {FAKE_GPUS_LABEL: NODE_GPUS},
}
WORKER_MODULE = "tests.ray.ray_worker"


@dataclass
class Ftq:
    cluster: Any  # ray.cluster_utils.Cluster
    ray: RayCluster
    probe: RayProbe
    executor: RayExecutor
    data_dir: Path


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(**NODE_ARGS)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def ftq(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ftq]:
    data_dir = tmp_path_factory.mktemp("ftq-data")
    cluster = RayCluster(ray_cluster.address, data_dir, refresh_s=0.2)
    executor = RayExecutor(cluster, WORKER_MODULE)
    try:
        yield Ftq(ray_cluster, cluster, RayProbe(cluster), executor, data_dir)
    finally:
        executor.close()
