"""What ftq alerts on, decided from plain data: a GPU's memory over FTQ_ALERT_VRAM_RATIO, a job's end, a job
whose OOM retries have run out; and when a GPU snapshot is worth an event.

Pure functions, so a test states a reading in a line; server.live.watchers runs them on the daemon's readings and
sends what they return (an event, a log line, the webhook).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A GPU alerted over the ratio is armed again only once its use falls this far below it, so that memory
# hovering at the line does not alert on every reading.
REARM_BELOW = 0.02
# Readings that move less than this are not a new snapshot (NVML's used memory moves a little all the time).
MEMORY_STEP = 0.01  # of the GPU's total
UTILIZATION_STEP = 10  # percentage points


@dataclass(frozen=True)
class Alert:
    alert: str  # vram | job_ended | oom_retries_exhausted
    message: str
    job_id: int | None = None
    gpu: int | None = None
    state: str | None = None

    def data(self, at: str) -> dict[str, Any]:
        found = {"alert": self.alert, "job_id": self.job_id, "gpu": self.gpu, "message": self.message, "at": at}
        return found if self.state is None else {**found, "state": self.state}


def used_share(gpu: dict[str, Any]) -> float | None:
    used, total = gpu.get("memory_used"), gpu.get("memory_total")
    if used is None or not total:
        return None
    return used / total


def vram_alerts(gpus: list[dict[str, Any]], ratio: float | None, alerted: set[str]) -> tuple[list[Alert], set[str]]:
    """Alerts for the GPUs whose used memory has crossed `ratio` since they were last below it, and the GPUs
    (by UUID) alerted and not yet re-armed. Unknown readings change nothing."""
    if ratio is None:
        return [], set()
    alerts, still = [], set()
    for gpu in gpus:
        share = used_share(gpu)
        uuid = gpu["uuid"]
        if share is None:
            if uuid in alerted:
                still.add(uuid)
            continue
        if share >= ratio:
            still.add(uuid)
            if uuid not in alerted:
                holder = f", held by job {gpu['bound_job']}" if gpu.get("bound_job") else ""
                alerts.append(
                    Alert(
                        "vram",
                        f"GPU {gpu['index']} ({gpu.get('name') or uuid}) uses {share:.0%} of its memory, over "
                        f"FTQ_ALERT_VRAM_RATIO={ratio:g}{holder}",
                        job_id=gpu.get("bound_job"),
                        gpu=gpu["index"],
                    )
                )
        elif uuid in alerted and share > ratio - REARM_BELOW:
            still.add(uuid)
    return alerts, still


def job_alerts(job_id: int, name: str, state: str, reason: str | None) -> list[Alert]:
    """A job that has ended (and stays ended: an OOM that is retried is no end): one alert, two when it ran out
    of memory with no retry left."""
    said = f": {reason}" if reason and reason != state else ""
    alerts = [Alert("job_ended", f"job {job_id} ({name}) ended {state}{said}", job_id=job_id, state=state)]
    if state == "oom":
        alerts.append(
            Alert(
                "oom_retries_exhausted",
                f"job {job_id} ({name}) ran out of GPU memory and has no OOM retry left{said}; requeue it with "
                "smaller settings (per_device_train_batch_size, cutoff_len, gradient_checkpointing) or more GPUs",
                job_id=job_id,
                state=state,
            )
        )
    return alerts


def _key(gpu: dict[str, Any]) -> tuple[Any, ...]:
    pids = tuple(sorted(p.get("pid") for p in gpu.get("processes") or []))
    return gpu["uuid"], gpu.get("bound_job"), gpu.get("healthy"), pids


def snapshot_changed(before: list[dict[str, Any]] | None, now: list[dict[str, Any]]) -> bool:
    """Whether a GPU snapshot says something the last one sent did not: a holder, health or process changed,
    or memory or utilization moved by more than a step."""
    if before is None or [_key(g) for g in before] != [_key(g) for g in now]:
        return True
    for old, new in zip(before, now, strict=True):
        total = new.get("memory_total") or 0
        if (old.get("memory_used") is None) != (new.get("memory_used") is None):
            return True
        if total and new.get("memory_used") is not None:
            if abs(new["memory_used"] - old["memory_used"]) > MEMORY_STEP * total:
                return True
        if (old.get("utilization") is None) != (new.get("utilization") is None):
            return True
        if new.get("utilization") is not None and abs(new["utilization"] - old["utilization"]) >= UTILIZATION_STEP:
            return True
    return False
