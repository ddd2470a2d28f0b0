"""What /healthz says: whether the daemon can do its work, and if not, why.

Pure: from what the scheduling loop last saw of itself, the database and the
GPU probe (`scheduler.contract.Health`) to the problems a person must know. The
loop proves the database takes writes with a heartbeat row every few seconds,
so a health check costs no query of its own.
"""

from __future__ import annotations

from scheduler.contract import Health

# The loop sleeps a tick between steps, and a step may wait a few seconds on processes it stops
# (scheduler.loop waits up to 5 s for a killed process group): a loop is stuck only past both.
STUCK_TICKS = 5
STUCK_SLACK_S = 15.0
# Below this (or 5% of a smaller disk), the next job, record or checkpoint will not fit: say so before the
# writes start failing.
MIN_FREE_BYTES = 64 << 20
MIN_FREE_SHARE = 0.05


def health_problems(health: Health, now: float, tick_s: float) -> list[str]:
    """Every reason the daemon cannot do its work now (empty when it can)."""
    problems = []
    if health.database_error is not None:
        problems.append(f"the database cannot be written: {health.database_error}")
    limit = STUCK_TICKS * tick_s + STUCK_SLACK_S
    since = health.last_tick_at if health.last_tick_at is not None else health.started_at
    if now - since > limit:
        problems.append(
            f"the scheduler loop has not completed a step for {now - since:.0f} s (it steps every {tick_s:g} s): "
            "no job is placed, tailed or stopped; see the daemon's log"
        )
    need = min(MIN_FREE_BYTES, int(MIN_FREE_SHARE * (health.disk_total_bytes or MIN_FREE_BYTES / MIN_FREE_SHARE)))
    if health.disk_free_bytes is not None and health.disk_free_bytes < need:
        problems.append(
            f"the data dir's disk has {health.disk_free_bytes / 2**20:.1f} MiB free (at least "
            f"{need / 2**20:.1f} MiB are needed): submits, records and checkpoints fail; free some space"
        )
    if health.probe_error is not None:
        problems.append(f"the GPU probe fails, so GPU jobs cannot be placed: {health.probe_error}")
    return problems
