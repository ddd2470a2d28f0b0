"""The spec an attempt runs: the job's, with the micro-batch auto_micro_batch chooses for the GPUs it was given.

Pure: the loop decides it before it hands the store the attempt to write
(scheduler.attempts); the choice itself is scheduler.policy.micro_batch's, over the
estimate (scheduler.policy.estimate) of the spec at each candidate micro-batch. A stored
spec carries no files: the model's config.json (and DeepSpeed JSON) come from
`files_of`, which the loop reads only when the choice is asked for, and keeps for the
attempt's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from scheduler.policy.estimate import estimate_for_spec
from scheduler.policy.micro_batch import choose_micro_batch
from scheduler.policy.retry import memory_settings
from scheduler.policy.sizing import SpecJsonOf
from worker.spec.job import JobSpec
from worker.spec.units import GIB

# The settings key of an attempt holding what auto_micro_batch decided and why.
NOTE_KEY = "auto_micro_batch"


@dataclass(frozen=True)
class AttemptSpec:
    spec: dict[str, Any]  # what the worker is handed (RUN_DIR/spec.json)
    note: str | None = None  # what auto_micro_batch decided, for the attempt's settings; None: it had no say

    def settings(self) -> dict[str, Any]:
        """The attempt's settings: the memory settings it runs, and the note when there is one."""
        return memory_settings(self.spec) | ({NOTE_KEY: self.note} if self.note else {})


def attempt_spec(
    spec: dict[str, Any],
    room_bytes: int | None,
    files_of: SpecJsonOf,
    earlier: Sequence[tuple[dict[str, Any] | None, float | None]] = (),
    tried: Sequence[dict[str, Any]] = (),
) -> AttemptSpec:
    """The job's spec with the largest micro-batch that fits in `room_bytes` (per GPU), when auto_micro_batch may.

    It may on GPUs whose free memory is known, unless DeepSpeed's config sets the
    micro-batch or group_by_length sampling (its order depends on the batch size) is
    asked for. `earlier`: (settings, peak GiB) of the job's earlier attempts, newest
    first, whose peak corrects the estimate; `tried`: the job's settings that ran out of
    memory, never chosen again. `files_of`: the JSON the estimate needs, asked for only
    when the choice is made.
    """
    try:
        parsed = JobSpec.model_validate(spec)
    except (ValidationError, ValueError):  # a stored spec that no longer validates: the worker will say why
        return AttemptSpec(spec)
    if not parsed.auto_micro_batch or parsed.gpus < 1:
        return AttemptSpec(spec)
    if parsed.deepspeed is not None:
        return AttemptSpec(spec, "kept: DeepSpeed's config owns the micro-batch")
    if parsed.train_sampling_strategy == "group_by_length":
        return AttemptSpec(spec, "kept: group_by_length orders the samples by micro-batch")
    if room_bytes is None:
        return AttemptSpec(spec)
    files = files_of(parsed)
    if files.model_config is None:
        return AttemptSpec(spec, "kept: no memory estimate for this model (its config.json cannot be read)")
    sizing = memory_settings(parsed.model_dump())
    measured = next(
        (peak for settings, gib in earlier if (peak := measured_peak(sizing, settings, gib)) is not None), None
    )
    config, deepspeed = files.model_config, files.deepspeed_config
    asked, accumulation = parsed.per_device_train_batch_size, parsed.gradient_accumulation_steps

    def need_for(micro: int) -> int:
        variant = {"per_device_train_batch_size": micro, "gradient_accumulation_steps": asked * accumulation // micro}
        return estimate_for_spec(config, parsed.model_copy(update=variant), deepspeed).per_gpu

    try:
        choice = choose_micro_batch(asked, accumulation, need_for, room_bytes, measured, ran_out(sizing, tried))
    except ValueError as exc:  # the estimate cannot be made for this spec (an unknown lora_target …)
        return AttemptSpec(spec, f"kept: no memory estimate ({exc})")
    chosen = {"per_device_train_batch_size": choice.micro_batch, "gradient_accumulation_steps": choice.accumulation}
    return AttemptSpec({**spec, **chosen}, choice.reason)


def same_length_and_checkpointing(sizing: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether settings ran this cutoff_len and checkpointing: what, beside the micro-batch, sizes a step."""
    return all(settings.get(key) == sizing[key] for key in ("cutoff_len", "gradient_checkpointing"))


def measured_peak(
    sizing: dict[str, Any], settings: dict[str, Any] | None, peak_gib: float | None
) -> tuple[int, int] | None:
    """(micro-batch, peak bytes) of an earlier attempt, when it ran this cutoff_len and checkpointing.

    Only then does its peak say how far the estimate is off for this spec: another
    cutoff_len or checkpointing changes the memory more than a correction could follow.
    """
    if not settings or not peak_gib or not settings.get("per_device_train_batch_size"):
        return None
    if not same_length_and_checkpointing(sizing, settings):
        return None
    return int(settings["per_device_train_batch_size"]), int(peak_gib * GIB)


def ran_out(sizing: dict[str, Any], tried: Sequence[dict[str, Any]]) -> set[int]:
    """The micro-batches that ran out of memory at this cutoff_len and checkpointing (from the job's `tried`)."""
    return {
        int(t["per_device_train_batch_size"])
        for t in tried
        if t.get("per_device_train_batch_size") and same_length_and_checkpointing(sizing, t)
    }


@dataclass(frozen=True)
class StartFacts:
    """What the choice of an attempt's spec reads of its job, in one read before the attempt is written.

    The store writes the attempt only while the job still holds this spec and these tried settings
    (server.db.store.write_start): a requeue meanwhile makes the choice again, from a fresh read.
    """

    spec: dict[str, Any]
    tried: list[dict[str, Any]]
    earlier: list[
        tuple[dict[str, Any] | None, float | None]
    ]  # (settings, peak GiB) of its earlier attempts, newest first
