"""How an attempt ended, in words a person can act on (STYLE.md 5).

Pure: from the exit code and the worker's `end` record to a job state and a
reason, never "failed: -9" (the exit code in words: worker.spec.exits.describe_exit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scheduler.policy.states import JobState
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NOT_STARTED, EXIT_OOM, describe_exit


@dataclass(frozen=True)
class Outcome:
    state: JobState
    reason: str
    # Nothing was trained (the worker never got its go): the job goes back to the queue in the same transaction.
    requeue: bool = False
    # The worker's node left the cluster mid-attempt: requeued by the job's `node_retry` budget (server.db.store).
    node_lost: bool = False


NOT_STARTED = (
    "the daemon stopped before it had recorded this worker, so the worker never started training; "
    "the job was queued again"
)


def classify(exit_code: int | None, end: dict[str, Any] | None, cancel_requested: bool) -> Outcome:
    """Decide the attempt's final state from the evidence the supervisor kept."""
    status = (end or {}).get("status")
    error = (end or {}).get("error")
    if cancel_requested:
        return Outcome(JobState.CANCELLED, "cancelled on request")
    if exit_code == EXIT_NOT_STARTED or status == "not_started":
        return Outcome(JobState.FAILED, NOT_STARTED, requeue=True)
    if status == "succeeded" and exit_code in (0, None):  # None: it ended while no daemon watched
        return Outcome(JobState.SUCCEEDED, "succeeded")
    if exit_code == EXIT_OOM or status == "oom":
        return Outcome(JobState.OOM, f"CUDA out of memory: {error or describe_exit(exit_code)}")
    if exit_code == 0:
        return Outcome(JobState.FAILED, "the worker exited 0 without saying it succeeded (no end record)")
    if exit_code == EXIT_BAD_INPUT:
        return Outcome(JobState.FAILED, f"bad input: {error or 'see the log'}")
    if exit_code == EXIT_FAILED and error:
        return Outcome(JobState.FAILED, f"training failed: {error}")
    detail = f"; its last record said: {error}" if error else ""
    was = "was " if exit_code is not None and exit_code < 0 else ""
    return Outcome(JobState.FAILED, f"the worker {was}{describe_exit(exit_code)}{detail}")
