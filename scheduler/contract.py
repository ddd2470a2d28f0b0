"""What the scheduling loop and the database tell each other, and what the loop reports of itself.

The loop holds processes, not truth: it reads and writes through a `Store` (the
server implements it on SQLite), which hands it the attempts to start or to
recover. The store carries decisions out, it does not make them: the loop reads
what a decision needs (`start_facts`, `end_facts`, the spec's files), decides
(scheduler.policy) and hands the store the outcome to write (scheduler.attempts).
`Health` is what /healthz reads of the loop's last steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from scheduler.executor import WorkerRef
from scheduler.policy.attempt_spec import AttemptSpec, StartFacts
from scheduler.policy.endings import EndFacts, Ending
from scheduler.policy.placement import Placement, QueuedJob, QueueShape
from scheduler.policy.sizing import SpecJson


@dataclass(frozen=True)
class StartedAttempt:
    attempt_id: int
    job_id: int
    run_dir: Path
    spec: dict[str, Any]
    number: int = 0  # the attempt's number within its job
    # The JSON its spec's estimate needed, when its start read it: kept for its end (scheduler.attempts).
    files: SpecJson | None = None


@dataclass(frozen=True)
class LiveAttempt:
    """An attempt the database says is live: what recovery needs to find its process."""

    attempt_id: int
    job_id: int
    run_dir: Path
    pid: int | None
    pid_start_time: int | None
    metrics_offset: int
    cancelling: bool
    problem: str | None = None  # why the row cannot be acted on (it is then failed with this reason)
    node: str = ""  # the Ray node of its (first) worker; "" for this machine
    workers: tuple[WorkerRef, ...] = ()  # every process of a job across nodes, in node-rank order
    nodes: list[str] = field(default_factory=list)  # the nodes its placement chose (leases), for one never spawned


class Store(Protocol):
    """What the loop needs from the database; the server implements it."""

    def queue_shape(self) -> QueueShape: ...
    def queued_jobs(self) -> tuple[list[QueuedJob], list[tuple[int, str]]]: ...
    def reject_job(self, job_id: int, reason: str) -> None: ...
    def leased_resources(self) -> set[str]: ...
    def start_facts(self, job_id: int) -> StartFacts | None: ...
    def write_start(
        self, placement: Placement, runs_dir: Path, facts: StartFacts, runs: AttemptSpec
    ) -> StartedAttempt | None: ...
    def attempt_spawned(
        self, attempt_id: int, pid: int, pid_start_time: int | None, workers: list[WorkerRef] | None = None
    ) -> None: ...
    def add_records(self, attempt_id: int, records: list[dict[str, Any]], offset: int) -> None: ...
    def add_records_of(self, batches: list[tuple[int, list[dict[str, Any]], int]]) -> None: ...
    def cancelling_attempts(self) -> list[int]: ...
    def live_attempts(self) -> list[LiveAttempt]: ...
    def attempt_adopted(self, attempt_id: int) -> None: ...
    def end_facts(self, attempt_id: int) -> EndFacts | None: ...
    def write_end(self, attempt_id: int, ending: Ending, exit_code: int | None, log_tail: str) -> bool: ...
    def fail_attempt(self, attempt_id: int, reason: str) -> None: ...
    def heartbeat(self, pid: int) -> None: ...
    def is_unavailable(self, exc: BaseException) -> bool: ...


@dataclass
class Health:
    """What the loop last saw of itself, the database and the GPU probe; /healthz reads it."""

    started_at: float = field(default_factory=time.monotonic)
    last_tick_at: float | None = None  # monotonic time of the last completed step
    database_error: str | None = None  # the last write that failed, until one succeeds
    probe_error: str | None = None  # the last GPU snapshot that failed, until one succeeds
    # Free bytes on the data dir's filesystem. A one-row heartbeat can still succeed on a full disk (SQLite
    # reuses its write-ahead log's space) while every insert fails, so the space itself is watched.
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
