"""What to try after a CUDA out-of-memory, in order, never the same settings twice.

Pure: from the spec that ran out of memory and the settings already tried, to the
overrides of the next attempt, or None with the reason to give up. First halve the
micro-batch and double gradient accumulation (the effective batch stays the same),
then turn on gradient checkpointing, then halve again; each step keeps what the
ones before changed. A requeue by hand starts the ladder over from its settings.

The ladder steps down from what the attempt ran, which need not be the job's spec:
auto_micro_batch (scheduler.policy.micro_batch) may have run a larger micro-batch with less
accumulation, stored in the attempt's settings. `ran_spec` is that spec; `retry_spec`
the next attempt's, with auto_micro_batch off, so it runs exactly the ladder's step
instead of growing back to the micro-batch that ran out of memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The spec fields that define "the same settings" for memory.
MEMORY_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "cutoff_len")


def memory_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The MEMORY_KEYS of a spec or an attempt's settings; anything else (the auto_micro_batch note) is left out."""
    return {key: spec.get(key) for key in MEMORY_KEYS}


def ran_spec(spec: dict[str, Any], settings: dict[str, Any] | None) -> dict[str, Any]:
    """The spec an attempt ran: the job's, with the memory settings stored on the attempt (None: the job's)."""
    ran = {key: value for key, value in memory_settings(settings or {}).items() if value is not None}
    return {**spec, **ran}


def retry_spec(ran: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The job's spec for the retry: the ladder's step from what ran, run as it is (auto_micro_batch off)."""
    return {**ran, **overrides, "auto_micro_batch": False}


@dataclass(frozen=True)
class RetryDecision:
    overrides: dict[str, Any] | None  # None: give up
    reason: str


def next_after_oom(
    spec: dict[str, Any], tried: list[dict[str, Any]], retries_used: int, max_retries: int
) -> RetryDecision:
    """The overrides for the next attempt after an OOM, or why there is none."""
    history = "; ".join(_describe(t) for t in [*tried, memory_settings(spec)])
    if retries_used >= max_retries:
        return RetryDecision(None, f"out of memory after {retries_used} automatic retries (tried: {history})")
    batch = int(spec.get("per_device_train_batch_size") or 1)
    accumulation = int(spec.get("gradient_accumulation_steps") or 1)
    halve = (
        {"per_device_train_batch_size": batch // 2, "gradient_accumulation_steps": accumulation * 2},
        f"micro-batch {batch} -> {batch // 2}, gradient accumulation {accumulation} -> {accumulation * 2} "
        "(same effective batch)",
    )
    checkpointing = ({"gradient_checkpointing": True}, "gradient checkpointing on")
    # Where on the ladder this job stands: a person's requeue (retries_used back to 0) starts it over, while
    # everything tried before stays out of reach.
    halved_before = retries_used > 0 and any(t.get("per_device_train_batch_size") != batch for t in tried)
    candidates: list[tuple[dict[str, Any], str]] = []
    if batch > 1 and not halved_before:
        candidates.append(halve)
    if not spec.get("gradient_checkpointing"):
        candidates.append(checkpointing)
    if batch > 1:
        candidates.append(halve)
    seen = [memory_settings(t) for t in tried] + [memory_settings(spec)]
    for overrides, what in candidates:
        settings = memory_settings({**spec, **overrides})
        if settings not in seen:
            return RetryDecision(overrides, f"out of memory; retrying with {what}")
    return RetryDecision(
        None,
        f"out of memory with micro-batch 1 and gradient checkpointing on; nothing smaller to try (tried: {history}). "
        "Use LoRA, a shorter cutoff_len, or more GPUs with ZeRO-3",
    )


def _describe(settings: dict[str, Any]) -> str:
    return (
        f"micro-batch {settings.get('per_device_train_batch_size')} x accumulation "
        f"{settings.get('gradient_accumulation_steps')}, gradient checkpointing "
        f"{'on' if settings.get('gradient_checkpointing') else 'off'}"
    )
