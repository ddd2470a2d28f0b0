"""How an ended attempt moves its job: cancel wins, the OOM ladder, the node retry, a requeue of one never started.

Pure: from the attempt's outcome (scheduler.policy.exits) and what the store read of the
attempt and its job (`EndFacts`), to the `Ending` the store writes in one transaction
(server.db.store.write_end). When the API moved the job meanwhile, the write's
compare-and-set loses and the loop decides again from a fresh read (scheduler.attempts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scheduler.policy.exits import Outcome
from scheduler.policy.retry import memory_settings, next_after_oom, ran_spec, retry_spec
from scheduler.policy.states import ACTIVE, JobState, route
from worker.spec.units import GIB


@dataclass(frozen=True)
class EndFacts:
    """What the ending of an attempt reads of it and its job."""

    job_id: int
    state: JobState  # the job's, as read: the write is a compare-and-set on it
    spec: dict[str, Any]
    tried: list[dict[str, Any]]
    oom_retries: int
    node_retries: int
    need_bytes: int | None
    settings: dict[str, Any] | None  # the attempt's: what it ran (scheduler.policy.attempt_spec)
    peak_memory_gib: float | None
    newest: bool  # only the job's newest attempt may move the job's state


@dataclass(frozen=True)
class Ending:
    """What the store writes for an ended attempt (its end, the job's moves, the leases freed)."""

    job_id: int
    attempt_state: JobState
    attempt_reason: str
    # The job's states from `frm` to attempt_state, each a compare-and-set; None: not this attempt's to move
    # (the job is not live, or a newer attempt exists): the attempt still ends and frees its GPUs.
    steps: tuple[JobState, ...] | None
    frm: JobState
    job_values: dict[str, Any] = field(default_factory=dict)  # set on the job as it reaches attempt_state
    requeue: dict[str, Any] | None = None  # then attempt_state -> queued, setting these; None: it stays


def decide_ending(facts: EndFacts, outcome: Outcome, need_of: Callable[[dict[str, Any]], int]) -> Ending:
    """The job's way out of this attempt. `need_of(spec)`: the per-GPU estimate of a stored spec (for a retry).

    A cancel asked for wins over how the process happened to end. An out-of-memory ending is
    retried when the job's `oom_retry` budget allows: back to the queue with smaller settings and
    a memory requirement of at least the peak this attempt reached. A lost node is retried by the
    `node_retry` budget; an attempt that never trained goes back to the queue as it was.
    """
    target = JobState.CANCELLED if facts.state == JobState.CANCELLING else outcome.state
    reason, job_values, requeue = outcome.reason, dict[str, Any](), None
    if target == JobState.OOM:
        reason, job_values, requeue = _after_oom(facts, outcome, need_of)
    elif outcome.node_lost and target == JobState.FAILED:
        budget = int(facts.spec.get("node_retry", 3))
        if facts.node_retries < budget:
            reason = (
                f"{outcome.reason}; queued again to resume from its last checkpoint on other GPUs "
                f"(node retry {facts.node_retries + 1} of {budget})"
            )
            requeue = {"node_retries": facts.node_retries + 1}
        else:
            reason = f"{outcome.reason}; not queued again: its node_retry budget ({budget}) is spent"
    if requeue is None and outcome.requeue and target == JobState.FAILED:
        requeue = {}
    steps = route(facts.state, target) if facts.state in ACTIVE and facts.newest else None
    return Ending(
        job_id=facts.job_id,
        attempt_state=target,
        attempt_reason=outcome.reason,
        steps=None if steps is None else tuple(steps),
        frm=facts.state,
        job_values={"reason": reason, **job_values},
        requeue=None if steps is None else requeue,
    )


def _after_oom(
    facts: EndFacts, outcome: Outcome, need_of: Callable[[dict[str, Any]], int]
) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(the job's reason, what it keeps of this attempt, the retry's values or None) after an out-of-memory."""
    ran = ran_spec(facts.spec, facts.settings)  # the micro-batch auto_micro_batch chose, not the one asked
    retry = next_after_oom(ran, facts.tried, facts.oom_retries, int(facts.spec.get("oom_retry", 3)))
    # Kept even when giving up, so that a later retry never comes back to these settings.
    kept = {"tried": [*facts.tried, memory_settings(ran)]}
    if retry.overrides is None:
        return f"{outcome.reason}; {retry.reason}", kept, None
    spec = retry_spec(ran, retry.overrides)
    peak = int((facts.peak_memory_gib or 0) * GIB)
    need = max(need_of(spec), peak, facts.need_bytes or 0) or None
    return (
        f"{outcome.reason}; {retry.reason}",
        kept,
        {"spec": spec, "need_bytes": need, "oom_retries": facts.oom_retries + 1},
    )
