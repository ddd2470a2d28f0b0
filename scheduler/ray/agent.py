"""The node agent: one detached Ray actor per node, that node's NodeSupervisor with its GPU probe.

The daemon (scheduler.ray.executor) calls it remotely; everything crosses as plain data. A plain class
here, made a Ray actor only at run time (`agent_options`, `remote_class`), so that this module imports
without ray: ray is an optional extra, imported only when FTQ_RAY_ADDRESS is set.

Its workers must outlive it (an agent that is killed or crashes is restarted by Ray, and the new one
adopts them): they lead their own sessions, and the agent runs with Ray's "kill the child processes of
a worker that exits" turned off (AGENT_ENV), without which `ray.kill` of the agent takes its workers
with it. The agent never runs a shell.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from scheduler.gpus.probe import make_probe
from scheduler.gpus.types import GpuInfo, GpuProbe, Topology
from scheduler.local.node_supervisor import NodeSupervisor

NAMESPACE = "ftq"
AGENT_PREFIX = "ftq-agent-"
# A node label (ray start --labels ftq.fake_gpus=2x24GiB) that gives the node fake GPUs (scheduler.gpus.fake).
FAKE_GPUS_LABEL = "ftq.fake_gpus"
# Ray kills a worker process's children when it exits, whatever their session (measured with Ray 2.60:
# ray.kill of the agent took its start_new_session children along). Off in the agent, so workers live on.
AGENT_ENV = {"RAY_kill_child_processes_on_worker_exit": "false"}
# Calls served at once: a settle may wait seconds for a process group; polls go on meanwhile.
AGENT_CONCURRENCY = 16


def agent_name(node: str, owner: str = "") -> str:
    """The node's agent of the daemon `owner` (its data dir, hashed): two daemons on one cluster never share an
    agent, so their attempt ids never meet; a daemon restarted on the same data dir finds its own again."""
    return f"{AGENT_PREFIX}{owner}-{node}" if owner else f"{AGENT_PREFIX}{node}"


def owner_of(data_dir: Path) -> str:
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def qualified(node: str, uuid: str) -> str:
    """A GPU's uuid as the cluster names it: one GPU of one node."""
    return f"{node}/{uuid}"


def node_probe(labels: Mapping[str, str]) -> GpuProbe:
    """The node's GPUs: fake ones when it has the ftq.fake_gpus label, else NVML (or none, saying why)."""
    return make_probe(labels.get(FAKE_GPUS_LABEL))


def marker_state(marker_path: str, token: str) -> str | None:
    """None when the daemon's marker file is here with its token; else why the node does not share its data dir."""
    try:
        found = Path(marker_path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return f"it does not see the daemon's data dir: {marker_path} is missing there (mount the shared storage)"
    except OSError as exc:
        return f"it cannot read {marker_path}: {exc}"
    if found != token:
        return f"{marker_path} there holds another daemon's token: the path is not the daemon's shared storage"
    return None


class NodeAgent(NodeSupervisor):
    """One node's workers and GPUs, for the daemon; constructed by Ray on the node it is pinned to.

    The NodeSupervisor's methods (start_worker, release, progress, ...) are the actor's remote methods as they are.
    """

    def __init__(self, node: str | None = None, labels: Mapping[str, str] | None = None) -> None:
        if node is None or labels is None:
            import ray

            context = ray.get_runtime_context()
            node = node if node is not None else context.get_node_id()
            labels = labels if labels is not None else context.get_node_labels()
        super().__init__()
        self.node = node
        self.probe = node_probe(labels)
        self.started_at = time.time()

    def hello(self, marker_path: str, marker_token: str) -> dict[str, Any]:
        """Who and where this agent is, what GPUs it reads, and whether it sees the daemon's shared storage."""
        return {
            "node": self.node,
            "hostname": socket.gethostname(),
            "address": _node_ip(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "marker_problem": marker_state(marker_path, marker_token),
            "probe": self.probe.description,
            "attempts": self.attempt_ids(),
        }

    def snapshot(self) -> list[GpuInfo]:
        return [replace(g, uuid=qualified(self.node, g.uuid), node=self.node) for g in self.probe.snapshot()]

    def topology(self) -> Topology:
        return {(qualified(self.node, a), qualified(self.node, b)): d for (a, b), d in self.probe.topology().items()}

    def reading(self) -> tuple[list[GpuInfo], Topology]:
        """snapshot and topology in one call: what the cluster probe asks every tick."""
        return self.snapshot(), self.topology()

    def free_port(self) -> tuple[str, int]:
        """This node's IP and a TCP port free on it now, for a gang's MASTER_ADDR / MASTER_PORT."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return _node_ip(), s.getsockname()[1]


def remote_class() -> Any:
    """NodeAgent as a Ray actor class (imports ray)."""
    import ray

    return ray.remote(NodeAgent)


def agent_options(node: str, owner: str = "") -> dict[str, Any]:
    """How the daemon starts a node's agent: detached and named (a new daemon finds it), pinned to its node,
    restarted by Ray whenever it dies (the daemon then re-adopts its workers), no CPU of the node taken."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {
        "name": agent_name(node, owner),
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,  # two daemons (or two refreshes) racing get the same agent
        "num_cpus": 0,
        "max_restarts": -1,
        "max_task_retries": 0,  # a spawn is not idempotent: the executor decides what to retry
        "max_concurrency": AGENT_CONCURRENCY,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False),
        "runtime_env": {"env_vars": dict(AGENT_ENV)},
    }


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (a test of the plain class): the address the hostname resolves to
        return socket.gethostbyname(socket.gethostname())
