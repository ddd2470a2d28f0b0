"""Jobs on a Ray cluster: the loop's Executor, starting and watching workers through the node agents.

An attempt's workers run on its placement's nodes (a gang: one per node, in node-rank order); each node's
agent holds them in its NodeSupervisor, the same code as the local executor's. `connect` makes the cluster,
its probe (scheduler.ray.probe) and this executor, sharing one connection.
"""

from __future__ import annotations

import logging
import signal as signals
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scheduler.executor import WorkerRef
from scheduler.local.node_supervisor import Progress, WorkerStart
from scheduler.policy.placement import NodeShare, Placement
from scheduler.ray.cluster import ANSWER_WAIT_S, CALL_TIMEOUT_S, RayCluster, short
from scheduler.ray.probe import RayProbe
from worker.spec.layout import log_file

log = logging.getLogger("ftq.ray")


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
        envs: list[dict[str, str]] = [{}]
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
            start = WorkerStart(attempt_id, str(run_dir), spec, share.cuda_visible_devices, cpu_threads)
            refs.append(agent.start_worker.remote(self._for_node(start, rank, envs[rank])))
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

    def _for_node(self, start: WorkerStart, rank: int, extra_env: dict[str, str]) -> WorkerStart:
        """`start` as node rank `rank` of the attempt runs it, with what this daemon tells every worker."""
        return replace(
            start,
            worker_module=self.worker_module,
            daemon_settings=self.daemon_settings,
            extra_env=extra_env,
            log_name=log_file(rank),
        )

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
                    self.cluster.call(node, "stop_unstarted_in", str(run_dir))
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
                else Progress(first.records, first.offset, False, None, more=first.more)  # another node is not done
            )
        return answer

    def signal(self, attempt_id: int, sig: int) -> bool:
        attempt = self._attempts.get(attempt_id)
        return attempt is not None and any(a is True for a in self._each(attempt, "signal", attempt_id, sig).values())

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
        args = (attempt_id, attempt.run_dir, worker.pid, worker.start_time, log_file(rank))
        try:
            alive = bool(self.cluster.call(worker.node, "adopt_worker", *args))
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
