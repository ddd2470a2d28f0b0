"""The job state machine, in one table (DESIGN.md, "Job states").

Pure data: the store turns `allowed_from(to)` into a compare-and-set
(`UPDATE ... WHERE state IN (...)`), because the API and the scheduler both write.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OOM = "oom"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


Q, ST, R, OK, F, OOM, CING, C = (
    JobState.QUEUED,
    JobState.STARTING,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.OOM,
    JobState.CANCELLING,
    JobState.CANCELLED,
)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    Q: frozenset({ST, C}),
    ST: frozenset({R, F, OOM, CING}),
    R: frozenset({OK, F, OOM, CING}),
    CING: frozenset({C}),
    OK: frozenset(),
    F: frozenset({Q}),
    OOM: frozenset({Q}),
    C: frozenset({Q}),
}

TERMINAL = frozenset({OK, F, OOM, C})
# States in which an attempt (and its leases, and maybe a process) is live.
ACTIVE = frozenset({ST, R, CING})


def can_transition(frm: JobState, to: JobState) -> bool:
    return to in TRANSITIONS[frm]


def allowed_from(to: JobState) -> frozenset[JobState]:
    """Every state from which `to` may be entered."""
    return frozenset(frm for frm, tos in TRANSITIONS.items() if to in tos)


def is_terminal(state: JobState) -> bool:
    return state in TERMINAL


def route(frm: JobState, to: JobState) -> list[JobState] | None:
    """The states to pass through, in order, to go from `frm` to `to` (ending with `to`); None when none leads there.

    An attempt's end may be learnt before the step that leads to it: a worker that succeeded while its
    `start` record was never stored ends a job that still reads `starting` (starting -> running ->
    succeeded), and a cancelled worker of a job that reads `running` goes through `cancelling`.
    Breadth-first over the table, so the route is the shortest, and requeue (a new attempt) is never on it.
    """
    if frm == to:
        return []
    paths: dict[JobState, list[JobState]] = {frm: []}
    frontier = [frm]
    while frontier:
        nxt = []
        for state in frontier:
            for following in sorted(TRANSITIONS[state], key=lambda s: s.value):
                if following in paths or following == Q:
                    continue
                paths[following] = [*paths[state], following]
                if following == to:
                    return paths[following]
                nxt.append(following)
        frontier = nxt
    return None
