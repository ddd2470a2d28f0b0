"""The scheduling loop as the API, the metrics and the watchers see it: a protocol, so that they never import it."""

from __future__ import annotations

from typing import Protocol

from scheduler.contract import Health


class Loop(Protocol):
    """What the rest of the daemon asks of the scheduling loop (`scheduler.loop.Scheduler` is the one there is)."""

    @property
    def health(self) -> Health:
        """What the loop last saw of itself, the database and the GPU probe (/healthz reads it)."""
        ...

    def wake(self) -> None:
        """Step now rather than at the next tick: a job was submitted, cancelled or requeued."""
        ...

    def live_pids(self) -> dict[int, int]:
        """attempt id -> worker pid, for the processes this daemon supervises."""
        ...
