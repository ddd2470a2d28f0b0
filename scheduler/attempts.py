"""Starting and ending an attempt on the loop's side: read what the decision needs, decide, hand the store the outcome.

The store carries decisions out and reads no file (server.db.store); the decisions are
pure (scheduler.policy.attempt_spec, scheduler.policy.endings). What they need of the
job's spec files (its model's config.json, its DeepSpeed JSON) is read here, outside any
transaction, at most once per attempt: at its start when auto_micro_batch asks, kept on the
`StartedAttempt` for its end, where an OOM retry's estimate needs the same files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scheduler.contract import StartedAttempt, Store
from scheduler.policy.attempt_spec import attempt_spec
from scheduler.policy.endings import decide_ending
from scheduler.policy.exits import Outcome
from scheduler.policy.placement import Placement
from scheduler.policy.sizing import SpecJson, SpecJsonOf, need_of_stored
from worker.spec.job import JobSpec

log = logging.getLogger("ftq.scheduler")

# How many times an ending whose compare-and-set lost a race (the API moved the job between our read and our
# write) is decided again from a fresh read before giving up.
CAS_TRIES = 10


@dataclass(frozen=True)
class NoFiles:
    """What a loop given no way to read spec files knows of them: nothing (no estimate is made)."""

    model_config: dict[str, Any] | None = None
    deepspeed_config: dict[str, Any] | None = None


def no_files(spec: JobSpec) -> SpecJson:
    return NoFiles()


class FilesOnce:
    """A spec's files for one attempt: read on the first ask, never again (the spec's paths do not change)."""

    def __init__(self, read: SpecJsonOf, files: SpecJson | None = None) -> None:
        self.read, self.files = read, files

    def __call__(self, spec: JobSpec) -> SpecJson:
        if self.files is None:
            self.files = self.read(spec)
        return self.files


def begin_attempt(
    store: Store, placement: Placement, runs_dir: Path, read_files: SpecJsonOf = no_files
) -> StartedAttempt | None:
    """queued -> starting with a new attempt, running the spec auto_micro_batch chose for the placement's GPUs.

    None when the store would not write it (the job was cancelled or requeued meanwhile, a lease is taken).
    """
    facts = store.start_facts(placement.job_id)
    if facts is None:
        return None
    files = FilesOnce(read_files)
    runs = attempt_spec(facts.spec, placement.room_bytes, files, facts.earlier, facts.tried)
    started = store.write_start(placement, runs_dir, facts, runs)
    if started is None:
        return None
    if runs.note is not None:
        log.info("job %s attempt %s: auto_micro_batch %s", placement.job_id, started.number, runs.note)
    return replace(started, files=files.files)


def finish_attempt(
    store: Store,
    attempt_id: int,
    outcome: Outcome,
    exit_code: int | None,
    log_tail: str,
    read_files: SpecJsonOf = no_files,
    files: SpecJson | None = None,
) -> None:
    """End the attempt, move its job as scheduler.policy.endings decides and free its leases: one write.

    When the write's compare-and-set loses (the API moved the job meanwhile, a cancel), the ending is
    decided again from a fresh read. `files`: those its start read, when it read them.
    """
    kept = FilesOnce(read_files, files)
    for _ in range(CAS_TRIES):
        facts = store.end_facts(attempt_id)
        if facts is None:  # ended already, or gone
            return
        ending = decide_ending(facts, outcome, lambda spec: need_of_stored(spec, kept))
        if ending.steps is None:
            log.warning(
                "attempt %s ended (%s) while job %s is %s",
                attempt_id,
                ending.attempt_state.value,
                facts.job_id,
                facts.state.value,
            )
        if store.write_end(attempt_id, ending, exit_code, log_tail):
            return
    raise RuntimeError(f"attempt {attempt_id}: its job kept changing state while the attempt was being ended")


class Attempts:
    """The loop's starts and ends of attempts, with each live attempt's spec files kept from its start to its end."""

    def __init__(self, store: Store, read_files: SpecJsonOf = no_files) -> None:
        self.store, self.read_files = store, read_files
        self._files: dict[int, SpecJson] = {}  # attempt id -> what its start read (none after a restart)

    def begin(self, placement: Placement, runs_dir: Path) -> StartedAttempt | None:
        started = begin_attempt(self.store, placement, runs_dir, self.read_files)
        if started is not None and started.files is not None:
            self._files[started.attempt_id] = started.files
        return started

    def finish(self, attempt_id: int, outcome: Outcome, exit_code: int | None, log_tail: str) -> None:
        files = self._files.get(attempt_id)
        finish_attempt(self.store, attempt_id, outcome, exit_code, log_tail, self.read_files, files)
        self.forget(attempt_id)

    def forget(self, attempt_id: int) -> None:
        """Drop what is kept of an attempt that ended another way (failed as unmanageable)."""
        self._files.pop(attempt_id, None)
