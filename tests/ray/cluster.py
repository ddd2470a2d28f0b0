"""A real Ray cluster on this machine for a test module: ray.cluster_utils.Cluster, started and stopped here.

The nodes' processes inherit this environment, so PYTHONPATH gets the repo first (the agents import
scheduler, the workers tests' modules). Small nodes: one CPU and 80 MB of object store each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers import REPO

NODE: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 80 << 20}
FAKE_GPUS_LABEL = "ftq.fake_gpus"  # scheduler.ray.agent.FAKE_GPUS_LABEL, without importing ray here


@contextmanager
def ray_cluster(nodes: int = 2, node_gpus: str = "2x24GiB", head_gpus: str | None = None) -> Iterator[Any]:
    """A head (fake GPUs only if `head_gpus`) and `nodes` nodes with `node_gpus` each, from their label."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    head = {**NODE, "include_dashboard": False}
    if head_gpus:
        head["labels"] = {FAKE_GPUS_LABEL: head_gpus}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(nodes):
            cluster.add_node(**NODE, labels={FAKE_GPUS_LABEL: node_gpus})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
