"""When a running worker counts as stalled: the one rule GET /jobs' stalled_for_s and GET /metrics' threshold use.

Pure: from the settings' factor and floor, a worker's usual interval between records and
the time of its last one to a number of seconds (or None), nothing read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.settings import Settings

# Before a worker has a rhythm (its first records: loading a big model takes minutes), wait this many times longer.
NO_RHYTHM_FACTOR = 10


@dataclass(frozen=True)
class StallRule:
    """FTQ_STALL_FACTOR and FTQ_STALL_MIN_S: when a running job counts as stalled."""

    factor: float = 5.0
    min_s: float = 60.0

    @classmethod
    def of(cls, settings: Settings) -> StallRule:
        return cls(settings.stall_factor, settings.stall_min_s)


DEFAULT_RULE = StallRule()  # the settings' defaults, for callers that name none


def stalled_for_s(
    now: datetime, last_record_at: datetime | None, interval_s: float | None, factor: float, min_s: float
) -> float | None:
    """Seconds since a running worker's last record, when that is several times its usual interval; else None.

    A hint, never a verdict: the worker is not stopped (a long evaluation or checkpoint save looks the
    same from here), but a person sees that it has gone quiet (SIGSTOP, a hung collective, a dead NFS).
    """
    if last_record_at is None:
        return None
    quiet = (now - last_record_at).total_seconds()
    return round(quiet, 1) if quiet > stall_limit_s(interval_s, factor, min_s) else None


def stall_limit_s(interval_s: float | None, factor: float, min_s: float) -> float:
    """How long a running worker may go without a record before it counts as stalled (GET /metrics exports it)."""
    return max(factor * interval_s, min_s) if interval_s is not None else NO_RHYTHM_FACTOR * min_s
