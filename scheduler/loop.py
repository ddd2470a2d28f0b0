"""The scheduling loop: reap exits, tail metrics, carry out cancels, place the queue.

One thread inside the daemon. It is woken at once by a submit, a cancel and a
worker's exit, and ticks on its own otherwise. It holds processes, not truth:
every decision is written through the `Store` (the database) before or as it
acts, and a state the database does not allow is not acted on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.attempts import Attempts, no_files
from scheduler.contract import Health, LiveAttempt, StartedAttempt, Store
from scheduler.executor import Executor, LocalExecutor, WorkerRef
from scheduler.gpus.types import GpuInfo, GpuProbe
from scheduler.local.node_supervisor import Progress
from scheduler.local.supervisor import WorkerProcess, spawn_worker
from scheduler.local.tail import last_end
from scheduler.policy.exits import Outcome, classify
from scheduler.policy.placement import Placement, can_place_any, plan
from scheduler.policy.sizing import SpecJsonOf
from scheduler.policy.states import JobState

log = logging.getLogger("ftq.scheduler")

HEARTBEAT_S = 2.0  # how often the loop proves the database takes writes and the GPU probe answers
# Points around a worker's start where a test may have the daemon SIGKILL itself (FTQ_DAEMON_FAULT), to prove
# that no instant of a crash leaves a worker untracked: the attempt is stored, the worker spawned, its pid
# stored, the worker told to go.
FAULT_POINTS = ("after-begin", "after-spawn", "after-pid", "after-go")


@dataclass
class Tracked:
    """What the loop keeps of a live attempt; its processes (and where they run) are the executor's."""

    offset: int = 0
    end: dict[str, Any] | None = None
    term_sent_at: float | None = None
    kill_sent_at: float | None = None
    # The last poll said the worker has ended (or lost its node): the next whole step reaps it.
    ended: Progress | None = None

    def advance(self, records: list[dict[str, Any]], offset: int) -> None:
        """What the loop keeps of records once they are stored: the offset they reach, and an end among them."""
        self.offset, self.end = offset, last_end(records) or self.end


class Scheduler:
    def __init__(
        self,
        store: Store,
        probe: GpuProbe,
        runs_dir: Path,
        cpu_slots: int,
        cancel_grace_s: float,
        tick_s: float = 1.0,
        tail_interval_s: float = 0.05,
        margin_bytes: int = 0,
        worker_module: str = "worker",
        spawn: Callable[..., WorkerProcess] = spawn_worker,
        fault: str | None = None,
        executor: Executor | None = None,
        daemon_settings: Mapping[str, str] | None = None,
        spec_files: SpecJsonOf = no_files,
    ) -> None:
        self.store, self.probe, self.runs_dir = store, probe, runs_dir
        self.cpu_slots, self.cancel_grace_s = cpu_slots, cancel_grace_s
        self.tick_s, self.tail_interval_s = tick_s, tail_interval_s
        self.margin_bytes, self.worker_module = margin_bytes, worker_module
        # Decided here, written by the store; a spec's JSON read by the server (server.services.paths.read_spec_files).
        self.attempts = Attempts(store, spec_files)
        # Where the workers run: this machine by default, a Ray cluster's nodes when the daemon is given one.
        self.executor: Executor = executor or LocalExecutor(worker_module, daemon_settings, self.wake, spawn)
        self._fault = fault.removeprefix("sigkill@") if fault else None
        self._tracked: dict[int, Tracked] = {}
        self._backlog = False  # the last poll left whole lines unread (its reads are bounded): read again at once
        # Attempts whose end could not be stored yet (the database was unavailable): tried again every step.
        self._unfinished: dict[int, Outcome] = {}
        self.health = Health()
        self._beat_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- life cycle ----

    def start(self) -> None:
        """Reconcile what a previous daemon left behind, then run the loop in a thread."""
        self.recover()
        self._thread = threading.Thread(target=self._run, name="ftq-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling. Workers keep running in their own sessions; the next start reconciles them."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # a database hiccup must not end scheduling for good
                log.exception("scheduler step failed; retrying at the next tick")
            # Until the next tick only the records are read, every tail_interval_s: they are what people watch
            # live (the event streams), and a whole step (reaping, cancels, placement) each time would delay
            # them; what needs a whole step sooner (a submit, a cancel, a worker's exit) wakes the loop.
            next_step = time.monotonic() + self.tick_s
            while not self._stop.is_set():
                left = next_step - time.monotonic()
                pause = 0.0 if self._backlog else self.tail_interval_s
                woken = self._wake.wait(min(left, pause) if self._tracked else left)
                if woken or left <= self.tail_interval_s:
                    break
                try:
                    self._phase(self._tail_all)
                except Exception:
                    log.exception("reading the records failed; retrying")
            self._wake.clear()

    def step(self) -> None:
        for phase in (self._finish_unfinished, self._reap, self._carry_out_cancels, self._place):
            self._phase(phase)
        self._heartbeat()
        self.health.last_tick_at = time.monotonic()

    def _phase(self, phase: Callable[[], None]) -> None:
        try:
            phase()
        except Exception as exc:  # each attempt's trouble is caught inside; what is left is the database's
            if not self.store.is_unavailable(exc):
                raise
            self.health.database_error = _said(exc)
            log.warning("scheduler: %s skipped, the database is unavailable (%s)", phase.__name__, exc)

    # ---- one attempt's trouble stays that attempt's ----

    def _guarded(self, attempt_id: int, what: str, action: Callable[[], None]) -> bool:
        """Run one attempt's share of a step; an error fails that attempt with the reason, never the loop.

        A database that cannot be used now (locked, full) is nobody's attempt's fault: the step is
        tried again at the next tick, and /healthz says why.
        """
        try:
            action()
            return True
        except Exception as exc:
            if self.store.is_unavailable(exc):
                self.health.database_error = _said(exc)
                log.warning("attempt %s: could not %s, the database is unavailable (%s)", attempt_id, what, exc)
                return False
            log.exception("attempt %s: could not %s; failing the attempt", attempt_id, what)
            self._give_up_on(attempt_id, f"the daemon could not {what}: {type(exc).__name__}: {exc}"[:2000])
            return False

    def _give_up_on(self, attempt_id: int, reason: str) -> None:
        """Stop every process of an attempt the daemon cannot handle, and end it with the reason."""
        if self._tracked.pop(attempt_id, None) is not None:
            self.executor.settle(attempt_id)
        self.attempts.forget(attempt_id)
        try:
            self.store.fail_attempt(attempt_id, reason)
        except Exception:
            log.exception("attempt %s: could not be failed either; it is left for the next start", attempt_id)

    def _finish_unfinished(self) -> None:
        for attempt_id, outcome in list(self._unfinished.items()):
            self._guarded(attempt_id, "store how it ended", lambda a=attempt_id, o=outcome: self._finish(a, o))

    def _finish(self, attempt_id: int, outcome: Outcome, exit_code: int | None = None, tail: str = "") -> None:
        self._unfinished[attempt_id] = outcome
        self.attempts.finish(attempt_id, outcome, exit_code, tail)
        del self._unfinished[attempt_id]

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._beat_at < HEARTBEAT_S:
            return
        self._beat_at = now
        try:
            self.store.heartbeat(os.getpid())
            self.health.database_error = None
        except Exception as exc:
            self.health.database_error = _said(exc)
            log.warning("the database cannot be written: %s", exc)
        try:
            found = os.statvfs(self.runs_dir.parent if self.runs_dir.parent.exists() else ".")
            self.health.disk_free_bytes = found.f_bavail * found.f_frsize
            self.health.disk_total_bytes = found.f_blocks * found.f_frsize
        except OSError:
            self.health.disk_free_bytes = self.health.disk_total_bytes = None
        self._machine()  # the GPU probe answers (or /healthz says why)

    def _fault_point(self, point: str) -> None:
        """Die here as a crash would, when a test asked for it (FTQ_DAEMON_FAULT=sigkill@POINT)."""
        if self._fault == point:
            log.warning("FTQ_DAEMON_FAULT: the daemon kills itself %s", point)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    # ---- recovery ----

    def recover(self) -> None:
        """Settle every attempt a previous daemon left live, before the API opens.

        A worker still running (the same pid and process start time, so a reused pid is
        never taken for ours) is adopted: tailed from the stored offset and reaped like
        our own. One that ended while no daemon watched is classified from its `end`
        record. Nothing is started twice and no lease is given twice: the leases in the
        database stay with their attempts throughout.
        """
        for live in self.store.live_attempts():
            try:
                self._recover_one(live)
            except Exception as exc:  # one bad row must not keep the daemon from starting
                log.exception("attempt %s: recovery failed; failing it", live.attempt_id)
                self._give_up_on(live.attempt_id, f"recovery at daemon start failed: {type(exc).__name__}: {exc}")
        # Those that ended while no daemon watched are settled now, from their last records, before serving.
        self._phase(self._reap)

    def _recover_one(self, live: LiveAttempt) -> None:
        if live.problem is not None:
            raise ValueError(live.problem)
        workers = list(live.workers) or ([WorkerRef(live.node, live.pid, live.pid_start_time)] if live.pid else [])
        if not workers:
            # The daemon died before it stored the pid, so before it told the worker to go: the worker
            # trained nothing. Stop it if it is still there (it is leaving by itself), and queue the job again.
            self.executor.stop_unstarted(live.attempt_id, live.run_dir, live.nodes)
            log.info("attempt %s: its worker never started; the job is queued again", live.attempt_id)
            outcome = classify(None, {"status": "not_started"}, cancel_requested=live.cancelling)
            self.attempts.finish(live.attempt_id, outcome, None, "")
            return
        # Taken on either way: one still running is tailed from the stored offset and reaped like our own;
        # one that ended while no daemon watched is settled by the first poll, from its last records.
        alive = self.executor.adopt(live.attempt_id, live.run_dir, workers)
        self._tracked[live.attempt_id] = Tracked(offset=live.metrics_offset)
        if alive:
            self.store.attempt_adopted(live.attempt_id)
            log.info("attempt %s: re-adopted its running worker, pid %s", live.attempt_id, workers[0].pid)

    # ---- the steps ----

    def _reap(self) -> None:
        """Settle every attempt whose last poll said its worker ended."""
        self._poll()
        for attempt_id, tracked in list(self._tracked.items()):
            if tracked.ended is not None:
                self._guarded(
                    attempt_id, "settle its ended worker", lambda a=attempt_id, t=tracked: self._reap_one(a, t)
                )

    def _reap_one(self, attempt_id: int, tracked: Tracked) -> None:
        ended = tracked.ended
        assert ended is not None
        # Whatever the leader left behind (data loader workers, torchrun, ranks) goes too.
        self.executor.settle(attempt_id)
        if ended.lost is not None:
            outcome = Outcome(JobState.FAILED, ended.lost, node_lost=True)
        else:
            cancel = tracked.term_sent_at is not None or attempt_id in self.store.cancelling_attempts()
            if ended.exit_code is None and tracked.end is None:
                tracked.end = ended.end
            outcome = classify(ended.exit_code, tracked.end, cancel_requested=cancel)
        del self._tracked[attempt_id]  # its processes are gone; storing the end is retried if it fails
        self._finish(attempt_id, outcome, ended.exit_code, ended.log_tail)
        log.info("attempt %s ended: %s (%s)", attempt_id, outcome.state.value, outcome.reason)

    def _tail_all(self) -> None:
        """Between whole steps: store the new records; an ended worker wakes the loop for its reaping."""
        if self._poll():
            self.wake()

    def _poll(self) -> bool:
        """One poll of every live attempt: store their new records (a bounded read each) in one transaction."""
        if not self._tracked:
            return False
        progress = self.executor.progress({a: t.offset for a, t in self._tracked.items() if t.ended is None})
        self._backlog = any(p.more for p in progress.values())
        batch = [(a, p) for a, p in progress.items() if a in self._tracked and p.records]
        if batch:
            try:  # every attempt's new records in one transaction
                self.store.add_records_of([(a, p.records, p.offset) for a, p in batch])
                stored = batch
            except Exception as exc:
                if self.store.is_unavailable(exc):
                    raise
                # One attempt's records broke the batch: each on its own, so that the error stays that attempt's.
                stored = [(a, p) for a, p in batch if self._guarded(a, "store its records", self._storer(a, p))]
            for attempt_id, p in stored:
                self._tracked[attempt_id].advance(p.records, p.offset)
        any_ended = False
        for attempt_id, p in progress.items():
            tracked = self._tracked.get(attempt_id)
            if tracked is None or not p.ended or tracked.offset != p.offset:
                continue  # running, or its last records are not stored yet: reaped once they are
            tracked.ended, any_ended = p, True
        return any_ended

    def _storer(self, attempt_id: int, progress: Progress) -> Callable[[], None]:
        return lambda: self.store.add_records(attempt_id, progress.records, progress.offset)

    def _carry_out_cancels(self) -> None:
        for attempt_id in self.store.cancelling_attempts():
            self._guarded(attempt_id, "cancel it", lambda a=attempt_id: self._cancel_one(a))

    def _cancel_one(self, attempt_id: int) -> None:
        now = time.monotonic()
        tracked = self._tracked.get(attempt_id)
        if tracked is None:
            if attempt_id not in self._unfinished:  # nothing of ours runs for it (the spawn failed)
                self._finish(attempt_id, Outcome(JobState.CANCELLED, "cancelled on request"))
            return
        if tracked.term_sent_at is None:
            tracked.term_sent_at = now
            self.executor.signal(attempt_id, signal.SIGTERM)
            log.info("attempt %s: SIGTERM sent to its process group", attempt_id)
        elif tracked.kill_sent_at is None and now - tracked.term_sent_at >= self.cancel_grace_s:
            tracked.kill_sent_at = now
            self.executor.signal(attempt_id, signal.SIGKILL)
            log.info("attempt %s: still alive after %.1fs; SIGKILL sent", attempt_id, self.cancel_grace_s)

    def _place(self) -> None:
        waiting = self.store.queue_shape()
        gpus, topology = self._machine() if waiting.gpu_jobs else ([], None)
        leased = self.store.leased_resources()
        if not can_place_any(gpus, leased, self.cpu_slots, waiting):
            return  # nothing could start, however long the queue: it is not read
        queue, unreadable = self.store.queued_jobs()
        for job_id, why in unreadable:  # one bad row must not stop placement for every other job
            log.error("job %s cannot be read (%s); failing it", job_id, why)
            self.store.reject_job(job_id, f"the daemon cannot read this job's row: {why}")
        result = plan(queue, gpus, leased, self.cpu_slots, self.margin_bytes, topology)
        for placement in result.placements:
            started = self.attempts.begin(placement, self.runs_dir)
            if started is None:  # cancelled meanwhile, or the lease was taken
                continue
            self._fault_point("after-begin")
            self._guarded(started.attempt_id, "start its worker", lambda s=started, p=placement: self._launch(s, p))

    def _machine(self) -> tuple[list[GpuInfo], Any]:
        """The GPUs and their links; none while the probe fails (the GPU jobs wait, /healthz says why)."""
        try:
            gpus, topology = self.probe.snapshot(), self.probe.topology()
            self.health.probe_error = None
            return gpus, topology
        except Exception as exc:
            self.health.probe_error = _said(exc)
            log.warning("the GPU probe failed; GPU jobs wait: %s", exc)
            return [], None

    def _launch(self, started: StartedAttempt, placement: Placement) -> None:
        cpu_threads = (
            max(1, (os.cpu_count() or 1) // max(1, self.cpu_slots))
            if placement.resources[0].startswith("cpu-")
            else None
        )
        try:
            workers = self.executor.spawn(started.attempt_id, placement, started.run_dir, started.spec, cpu_threads)
        except (OSError, ValueError, RuntimeError) as exc:
            self.executor.settle(started.attempt_id)  # a gang's workers that did start
            self._finish(started.attempt_id, Outcome(JobState.FAILED, f"could not start the worker: {exc}"))
            return
        self._fault_point("after-spawn")
        try:
            self.store.attempt_spawned(started.attempt_id, workers[0].pid, workers[0].start_time, workers)
        except Exception:
            # Untracked, it must not train: it has not been told to go, and it will not be.
            self.executor.settle(started.attempt_id)
            self._unfinished[started.attempt_id] = classify(None, {"status": "not_started"}, False)
            raise
        self._tracked[started.attempt_id] = Tracked()  # from here on, any failure stops it (_give_up_on)
        self._fault_point("after-pid")
        self.executor.release(started.attempt_id)
        self._fault_point("after-go")
        where = ",".join(placement.resources)
        log.info("job %s attempt %s started: pid %s on %s", started.job_id, started.attempt_id, workers[0].pid, where)

    def live_pids(self) -> dict[int, int]:
        """attempt id -> worker pid, for the processes this daemon supervises."""
        return {a: pid for a, pid in self.executor.pids().items() if a in self._tracked}


def _said(exc: BaseException) -> str:
    """An error as /healthz tells it: its type and message, bounded."""
    return f"{type(exc).__name__}: {exc}"[:500]
