"""Jobs on a Ray cluster: one agent per node (scheduler.ray_agent), the cluster's GPUs as one probe, and an
Executor that starts and watches workers through the agents.

`RayCluster` connects (FTQ_RAY_ADDRESS), proves that each node shares the daemon's data dir (a marker file
with a token only this daemon knows; a node that does not see it is reported in `problems` and not used),
and keeps one agent per live node, refreshed every few seconds. `RayProbe` is the cluster's GPUs for the
placement; `RayExecutor` the loop's Executor. Ray is imported only here, and only when a cluster is made.

Remote calls never hold the loop for long: a node whose answer is late (a node that died but is not marked
dead yet, ~15 s with Ray's health checks) is skipped until it answers, its call left pending meanwhile.
"""

from __future__ import annotations

import logging
import math
import secrets
import signal as signals
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.executor import WorkerRef
from scheduler.node_supervisor import Progress
from scheduler.placement import NodeShare, Placement
from scheduler.probe import GpuInfo, ProbeError, Topology
from scheduler.ray_agent import NAMESPACE, agent_options, owner_of, remote_class
from worker.spec import LOG_FILE

log = logging.getLogger("ftq.ray")

REFRESH_S = 5.0  # how often the cluster's node list is read again (new nodes get agents, dead ones are lost)
START_WAIT_S = 60.0  # at connect: how long the first agents may take to answer
ANSWER_WAIT_S = 2.0  # a tick's calls (readings, progress): how long a node's answer is waited for
CALL_TIMEOUT_S = 30.0  # a call the loop cannot go on without (spawn, release, adopt, settle)


def short(node: str) -> str:
    return node[:8]


def lost_reason(node: str, address: str | None) -> str:
    return f"node lost: node {short(node)} ({address or 'address unknown'}) left the cluster"


def node_log_name(rank: int) -> str:
    """Where a gang's node rank r writes its log in the shared run dir: rank 0 the usual worker.log."""
    return LOG_FILE if rank == 0 else f"worker.node{rank}.log"


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
        """What GET /gpus shows of it (server.models.NodePublic)."""
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


class RayProbe:
    """scheduler.probe.GpuProbe over every usable node of the cluster: node-qualified GPUs, one call per node."""

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster
        self._topology: Topology = {}
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        usable = self.cluster.usable()
        gpus = sum(s.gpus for s in usable)
        text = (
            f"Ray cluster at {self.cluster.address}: {len(usable)} node{'' if len(usable) == 1 else 's'}, {gpus} GPUs"
        )
        unusable = len(self.cluster.problems)
        return text + (f" ({unusable} node{'' if unusable == 1 else 's'} not used: see /gpus)" if unusable else "")

    def snapshot(self) -> list[GpuInfo]:
        """Every usable node's GPUs. A node that does not answer in time is left out this tick (its leases stay);
        ProbeError when no node answers at all, so that the loop keeps what it knows and skips a tick."""
        self.cluster.refresh()
        usable = self.cluster.usable()
        answers = self.cluster.gather(
            "reading", {s.node: (lambda a: a.reading.remote(), None) for s in usable}, ANSWER_WAIT_S
        )
        gpus: list[GpuInfo] = []
        topology: Topology = {}
        for state in usable:
            answer = answers.get(state.node, (None, None))[0]
            if answer is None or isinstance(answer, BaseException):
                continue
            state.gpus = len(answer[0])
            gpus += answer[0]
            topology.update(answer[1])
        if usable and not any(a is not None and not isinstance(a, BaseException) for a, _ in answers.values()):
            raise ProbeError(f"no node of the Ray cluster at {self.cluster.address} answered in {ANSWER_WAIT_S:g} s")
        with self._lock:
            self._topology = topology
        return gpus

    def topology(self) -> Topology:
        """The links of the last snapshot's GPUs (within each node; none across nodes)."""
        with self._lock:
            return dict(self._topology)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node as GET /gpus shows it (server.machine.cluster_nodes)."""
        with self.cluster._lock:
            return [s.public() for s in self.cluster.nodes.values()]

    def close(self) -> None:
        pass  # the executor closes the cluster


@dataclass
class _Attempt:
    run_dir: str
    nodes: list[str]  # node ids, in node-rank order
    workers: dict[int, WorkerRef] = field(default_factory=dict)  # node rank -> its worker, once started
    stopped: bool = False  # a gang that lost a node: its other workers were told to stop

    def rank_on(self, node: str) -> int:
        return self.nodes.index(node)


class RayExecutor:
    """scheduler.executor.Executor over the cluster's agents: an attempt's workers on its placement's nodes."""

    def __init__(
        self, cluster: RayCluster, worker_module: str = "worker", daemon_settings: Mapping[str, str] | None = None
    ) -> None:
        self.cluster = cluster
        self.worker_module = worker_module
        self.daemon_settings = dict(daemon_settings or {})
        self._attempts: dict[int, _Attempt] = {}

    def spawn(
        self, attempt_id: int, placement: Placement, run_dir: Path, spec: dict[str, Any], cpu_threads: int | None
    ) -> list[WorkerRef]:
        shares = placement.shares or (
            NodeShare(placement.node, placement.resources, placement.cuda_visible_devices or ""),
        )
        nodes = [self.cluster.resolve(s.node) for s in shares]
        for node in nodes:
            state = self.cluster.nodes.get(node)
            if state is None or state.state != "usable":
                why = state.problem if state is not None else "it is not in the cluster"
                raise RuntimeError(f"Ray node {short(node)} cannot take workers: {why}")
        attempt = self._attempts[attempt_id] = _Attempt(str(run_dir), nodes)
        envs: list[dict[str, str] | None] = [None]
        if len(nodes) > 1:
            address, port = self.cluster.call(nodes[0], "free_port")
            envs = [
                {
                    "FTQ_NNODES": str(len(nodes)),
                    "FTQ_NODE_RANK": str(rank),
                    "FTQ_MASTER_ADDR": address,
                    "FTQ_MASTER_PORT": str(port),
                }
                for rank in range(len(nodes))
            ]
        # Every node's worker at once (each waits at its gate), then each answer; one that failed fails the spawn,
        # and the loop settles the ones that started.
        refs = []
        for rank, (node, share) in enumerate(zip(nodes, shares, strict=True)):
            agent = self.cluster.agent_of(node)
            if agent is None:
                raise RuntimeError(self.cluster.lost(node) or f"Ray node {short(node)} has no agent")
            args = (attempt_id, str(run_dir), spec, share.cuda_visible_devices, cpu_threads, envs[rank])
            refs.append(agent.spawn.remote(*args, node_log_name(rank), self.daemon_settings, self.worker_module))
        errors = []
        for rank, ref in enumerate(refs):
            try:
                pid, start_time = self.cluster._ray.get(ref, timeout=CALL_TIMEOUT_S)
                attempt.workers[rank] = WorkerRef(nodes[rank], pid, start_time)
            except Exception as exc:
                self.cluster.failed(nodes[rank], exc)
                errors.append(f"node {short(nodes[rank])}: {type(exc).__name__}: {exc}")
        if errors:
            raise RuntimeError("could not start the worker on Ray " + "; ".join(errors))
        return [attempt.workers[rank] for rank in range(len(nodes))]

    def release(self, attempt_id: int) -> bool:
        attempt = self._attempts.get(attempt_id)
        if attempt is None:
            return False
        answers = self._each(attempt, "release", attempt_id)
        return len(answers) == len(attempt.nodes) and all(a is True for a in answers.values())

    def adopt(self, attempt_id: int, run_dir: Path, workers: list[WorkerRef]) -> bool:
        nodes = [self.cluster.resolve(w.node) for w in workers]
        attempt = self._attempts[attempt_id] = _Attempt(str(run_dir), nodes)
        attempt.workers = {
            r: WorkerRef(n, w.pid, w.start_time) for r, (n, w) in enumerate(zip(nodes, workers, strict=True))
        }
        alive = []
        for rank, worker in attempt.workers.items():
            if self.cluster.lost(worker.node) is None:
                alive.append(self._adopt_one(attempt_id, attempt, rank))
        return any(alive)

    def stop_unstarted(self, attempt_id: int, run_dir: Path, nodes: list[str]) -> None:
        for node in dict.fromkeys(self.cluster.resolve(n) for n in nodes or [""]):
            if self.cluster.lost(node) is None:
                try:
                    self.cluster.call(node, "stop_unstarted", str(run_dir))
                except RuntimeError as exc:
                    log.warning("attempt %s: could not stop its unstarted worker: %s", attempt_id, exc)

    def progress(self, offsets: Mapping[int, int]) -> dict[int, Progress]:
        """One call per node holding attempts, waited for together; a gang's records from its node rank 0."""
        self.cluster.refresh()
        answer: dict[int, Progress] = {}
        asked: dict[str, dict[int, int]] = {}
        for attempt_id, offset in offsets.items():
            attempt = self._attempts.get(attempt_id)
            if attempt is None:
                continue
            lost = next(filter(None, (self.cluster.lost(n) for n in attempt.nodes)), None)
            if lost is not None:
                answer[attempt_id] = Progress([], offset, True, None, lost=lost)
                self._stop_the_rest(attempt_id, attempt)
                continue
            for worker in attempt.workers.values():
                asked.setdefault(worker.node, {})[attempt_id] = offset  # rank > 0: the same file; its records unused
        calls = {node: (lambda agent, o=dict(o): agent.progress.remote(o), o) for node, o in asked.items()}
        parts: dict[int, dict[int, Progress]] = {}  # attempt -> node rank -> its worker's progress
        for node, (result, was_asked) in self.cluster.gather("progress", calls, ANSWER_WAIT_S).items():
            if isinstance(result, BaseException):
                continue
            for attempt_id, offset in was_asked.items():
                attempt = self._attempts.get(attempt_id)
                if attempt is None or node not in attempt.nodes:
                    continue
                rank = attempt.rank_on(node)
                if attempt_id not in result:  # the agent does not know it: Ray restarted the agent
                    self._adopt_one(attempt_id, attempt, rank)
                elif rank > 0 or offset == offsets.get(attempt_id):  # an answer to an older question is stale
                    parts.setdefault(attempt_id, {})[rank] = result[attempt_id]
        for attempt_id, by_rank in parts.items():
            if attempt_id in answer or 0 not in by_rank:
                continue
            first = by_rank[0]
            ended = len(by_rank) == len(self._attempts[attempt_id].nodes) and all(p.ended for p in by_rank.values())
            answer[attempt_id] = (
                first
                if ended or not first.ended
                else Progress(first.records, first.offset, False, None)  # rank 0 is done, another node is not
            )
        return answer

    def signal(self, attempt_id: int, sig: int) -> None:
        attempt = self._attempts.get(attempt_id)
        if attempt is not None:
            self._each(attempt, "signal", attempt_id, sig)

    def settle(self, attempt_id: int) -> None:
        attempt = self._attempts.pop(attempt_id, None)
        if attempt is not None:
            self._each(attempt, "settle", attempt_id)

    def pids(self) -> dict[int, int]:
        return {a: t.workers[0].pid for a, t in list(self._attempts.items()) if 0 in t.workers}

    def close(self) -> None:
        self.cluster.close()

    def _each(self, attempt: _Attempt, method: str, *args: Any) -> dict[str, Any]:
        """method(*args) on every live node of the attempt that has its worker, at once: node -> answer.

        Not through gather: a late answer is not kept for the next call (a SIGKILL must not be answered by
        the SIGTERM before it)."""
        refs = {}
        for worker in attempt.workers.values():
            agent = self.cluster.agent_of(worker.node) if self.cluster.lost(worker.node) is None else None
            if agent is not None:
                refs[getattr(agent, method).remote(*args)] = worker.node
        ray = self.cluster._ray
        ready = ray.wait(list(refs), num_returns=len(refs), timeout=CALL_TIMEOUT_S)[0] if refs else []
        answers: dict[str, Any] = {}
        for ref in ready:
            node = refs[ref]
            try:
                answers[node] = ray.get(ref)
            except Exception as exc:
                self.cluster.failed(node, exc)
                log.warning("%s of attempt %s on Ray node %s failed: %s", method, args[0], short(node), exc)
        for node in set(refs.values()) - answers.keys():
            log.warning(
                "%s of attempt %s on Ray node %s: no answer in %g s", method, args[0], short(node), CALL_TIMEOUT_S
            )
        return answers

    def _adopt_one(self, attempt_id: int, attempt: _Attempt, rank: int) -> bool:
        worker = attempt.workers[rank]
        args = (attempt_id, attempt.run_dir, worker.pid, worker.start_time, node_log_name(rank))
        try:
            alive = bool(self.cluster.call(worker.node, "adopt", *args))
        except RuntimeError as exc:
            log.warning("attempt %s: could not adopt its worker: %s", attempt_id, exc)
            return False
        log.info(
            "attempt %s: the agent of node %s took on pid %s (alive: %s)",
            attempt_id,
            short(worker.node),
            worker.pid,
            alive,
        )
        return alive

    def _stop_the_rest(self, attempt_id: int, attempt: _Attempt) -> None:
        """A gang that lost a node cannot go on: its workers on the other nodes are killed (settle cleans up)."""
        if not attempt.stopped and len(attempt.nodes) > 1:
            attempt.stopped = True
            self._each(attempt, "signal", attempt_id, signals.SIGKILL)


def connect(
    address: str, data_dir: Path, worker_module: str = "worker", daemon_settings: Mapping[str, str] | None = None
) -> tuple[RayProbe, RayExecutor]:
    """The probe and the executor of the Ray cluster at address (FTQ_RAY_ADDRESS), sharing one connection."""
    cluster = RayCluster(address, data_dir)
    return RayProbe(cluster), RayExecutor(cluster, worker_module, daemon_settings)
