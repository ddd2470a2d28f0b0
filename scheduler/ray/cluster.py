"""The connection to a Ray cluster and one node agent (scheduler.ray.agent) per live node.

`RayCluster` connects (FTQ_RAY_ADDRESS), proves that each node shares the daemon's data dir (a marker file
with a token only this daemon knows; a node that does not see it is reported in `problems` and not used),
and keeps one agent per live node, refreshed every few seconds. Ray is imported only here (and in the
agents), and only when a cluster is made.

Remote calls never hold the loop for long: a node whose answer is late (a node that died but is not marked
dead yet, ~15 s with Ray's health checks) is skipped until it answers, its call left pending meanwhile.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.ray.agent import NAMESPACE, agent_options, owner_of, remote_class

log = logging.getLogger("ftq.ray")

REFRESH_S = 5.0  # how often the cluster's node list is read again (new nodes get agents, dead ones are lost)
START_WAIT_S = 60.0  # at connect: how long the first agents may take to answer
ANSWER_WAIT_S = 2.0  # a tick's calls (readings, progress): how long a node's answer is waited for
CALL_TIMEOUT_S = 30.0  # a call the loop cannot go on without (spawn, release, adopt, settle)


def short(node: str) -> str:
    return node[:8]


def lost_reason(node: str, address: str | None) -> str:
    return f"node lost: node {short(node)} ({address or 'address unknown'}) left the cluster"


@dataclass
class NodeState:
    """One node of the cluster as the daemon sees it."""

    node: str
    address: str | None = None
    hostname: str | None = None
    state: str = "starting"  # starting | usable | unusable | lost
    problem: str | None = None
    probe: str | None = None
    gpus: int = 0
    agent: Any = None  # the actor handle; None: get (or create) it again

    def public(self) -> dict[str, Any]:
        """What GET /gpus shows of it (server.db.models.NodePublic)."""
        return {
            "node": self.node,
            "address": self.address,
            "hostname": self.hostname,
            "state": "unusable" if self.state == "starting" else self.state,
            "problem": self.problem if self.state != "starting" else "its agent has not answered yet",
            "gpus": self.gpus,
            "probe": self.probe,
        }


class RayCluster:
    """The connection to a Ray cluster and one agent per live node, each checked to share the data dir."""

    def __init__(
        self,
        address: str,
        data_dir: Path,
        refresh_s: float = REFRESH_S,
        start_wait_s: float = START_WAIT_S,
    ) -> None:
        import ray

        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        self.address, self.refresh_s = address, refresh_s
        self.own_node: str = ray.get_runtime_context().get_node_id()
        self.token = secrets.token_hex(16)
        self.owner = owner_of(Path(data_dir))  # whose agents these are: this data dir's daemon
        self.marker = Path(data_dir) / f".ftq-shared-{self.token}"
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(self.token, encoding="utf-8")
        self.nodes: dict[str, NodeState] = {}
        self._agent_class = remote_class()
        self._pending: dict[tuple[str, str], tuple[Any, Any]] = {}  # (kind, node) -> (object ref, what was asked)
        self._lock = threading.RLock()
        self._refreshed_at, self._refreshing = -math.inf, False
        self.refresh(wait_s=start_wait_s)

    # ---- nodes ----

    def refresh(self, wait_s: float = 0.0, force: bool = False) -> None:
        """Read the node list again (at most every refresh_s unless forced); new nodes get an agent and a hello."""
        with self._lock:
            now = time.monotonic()
            if not force and not wait_s and now - self._refreshed_at < self.refresh_s:
                return
            self._refreshed_at, self._refreshing = now, True
            try:
                self._refresh(wait_s)
            finally:
                self._refreshing = False

    def _refresh(self, wait_s: float) -> None:
        alive = {n["NodeID"]: n for n in self._ray.nodes() if n.get("Alive")}
        for node, state in self.nodes.items():
            if node not in alive and state.state != "lost":
                self._mark_lost(state)
        if wait_s:  # whoever waits wants today's answers, not those of a call left pending at an earlier refresh
            for key in [k for k in self._pending if k[0] == "hello"]:
                del self._pending[key]
        calls = {}
        for node, info in alive.items():
            self.nodes.setdefault(node, NodeState(node, info.get("NodeManagerAddress")))
            # Every node, every time: a new one gets its agent, and one whose storage went away is noticed.
            calls[node] = (lambda agent: agent.hello.remote(str(self.marker), self.token), None)
        for node, (answer, _) in self.gather("hello", calls, wait_s).items():
            self._hello(self.nodes[node], answer)

    def _hello(self, state: NodeState, answer: Any) -> None:
        from ray.exceptions import ActorUnavailableError

        if isinstance(answer, ActorUnavailableError):
            return  # Ray is restarting the agent: the node is what it was
        if isinstance(answer, BaseException):
            problem = f"its agent did not answer: {type(answer).__name__}: {answer}"[:500]
        else:
            state.hostname, state.address = answer["hostname"], answer["address"] or state.address
            state.probe = answer["probe"]
            problem = answer["marker_problem"]
        was = (state.state, state.problem)
        state.state, state.problem = ("unusable", problem) if problem else ("usable", None)
        if (state.state, state.problem) != was:
            where = f"node {short(state.node)} ({state.address}, {state.hostname})"
            if problem:
                log.warning("Ray %s is not used: %s", where, problem)
            else:
                log.info("Ray %s is usable: %s", where, state.probe)

    def _mark_lost(self, state: NodeState) -> None:
        state.state, state.problem, state.agent = "lost", lost_reason(state.node, state.address), None
        for key in [k for k in self._pending if k[1] == state.node]:
            del self._pending[key]
        log.warning("Ray %s", state.problem)

    def resolve(self, node: str) -> str:
        """A placement's node as a Ray node id: "" is the daemon's own node."""
        return node or self.own_node

    def usable(self) -> list[NodeState]:
        with self._lock:
            return [s for s in self.nodes.values() if s.state == "usable"]

    def lost(self, node: str) -> str | None:
        """Why node's workers are lost (it left the cluster, or was never seen in it); None while it is there."""
        state = self.nodes.get(node)
        if state is None or state.state == "lost":
            return lost_reason(node, state.address if state else None)
        return None

    @property
    def problems(self) -> dict[str, str]:
        """node id -> why it is not used, for /gpus and /healthz."""
        with self._lock:
            return {n: s.problem for n, s in self.nodes.items() if s.problem and s.state != "starting"}

    def agent_of(self, node: str) -> Any:
        """The node's agent (got, or created, when the last one died); None for a lost or unknown node."""
        with self._lock:
            state = self.nodes.get(node)
            if state is None or state.state == "lost":
                return None
            if state.agent is None:
                state.agent = self._agent_class.options(**agent_options(node, self.owner)).remote()
            return state.agent

    # ---- calls ----

    def gather(
        self, kind: str, calls: Mapping[str, tuple[Callable[[Any], Any], Any]], wait_s: float
    ) -> dict[str, tuple[Any, Any]]:
        """One call per node (call(agent) -> object ref), waited for together: node -> (answer, what was asked).

        A node that does not answer within wait_s is left out and its call kept: the next gather of the same
        kind takes that call's answer (with what it asked then) instead of asking again. An answer that is an
        error is returned as the exception; a dead agent is replaced first.
        """
        with self._lock:
            fresh, stale, owner = [], [], {}
            for node, (call, asked) in calls.items():
                key = (kind, node)
                if key not in self._pending:
                    agent = self.agent_of(node)
                    if agent is None:
                        continue
                    self._pending[key] = (call(agent), asked)
                    fresh.append(self._pending[key][0])
                else:
                    stale.append(self._pending[key][0])
                owner[self._pending[key][0]] = key
            ready = []
            if fresh:
                ready += self._ray.wait(fresh, num_returns=len(fresh), timeout=wait_s)[0]
            if stale:
                ready += self._ray.wait(stale, num_returns=len(stale), timeout=0)[0]
            answers: dict[str, tuple[Any, Any]] = {}
            for ref in ready:
                key = owner[ref]
                _, asked = self._pending.pop(key)
                try:
                    answers[key[1]] = (self._ray.get(ref), asked)
                except Exception as exc:
                    self.failed(key[1], exc)
                    answers[key[1]] = (exc, asked)
            return answers

    def call(self, node: str, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """One call to node's agent, waited for; raises RuntimeError naming the node when it fails."""
        agent = self.agent_of(node)
        if agent is None:
            raise RuntimeError(self.lost(node) or f"node {short(node)} has no agent")
        try:
            return self._ray.get(getattr(agent, method).remote(*args), timeout=timeout)
        except Exception as exc:
            self.failed(node, exc)
            raise RuntimeError(f"node {short(node)}: {method} failed: {type(exc).__name__}: {exc}") from exc

    def failed(self, node: str, exc: BaseException) -> None:
        """A call to node's agent raised: a dead agent on a live node is got (Ray restarts it) or created anew."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        if isinstance(exc, ActorUnavailableError):
            return  # Ray is restarting it; the next call goes through
        if isinstance(exc, RayActorError):
            with self._lock:
                state = self.nodes.get(node)
                if state is not None and state.state != "lost":
                    state.agent = None
                    log.warning("the agent of Ray node %s died (%s); getting it again", short(node), exc)
            if not self._refreshing:
                self.refresh(force=True)  # the node may have died with it
        else:
            log.warning("Ray node %s: a call to its agent failed: %s", short(node), exc)

    def close(self) -> None:
        """Forget the cluster; the agents and their workers go on (the next daemon adopts them)."""
        self.marker.unlink(missing_ok=True)
