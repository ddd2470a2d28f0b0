"""A stored spec's memory estimate from the JSON read for it: the one place that makes it and says when it cannot.

Pure: the files are read by the caller (server.services.paths.read_spec_files, once per
attempt on the loop's side, once at submit), and handed in; an estimate that cannot be
made (a config.json that is not a transformer's, an unknown lora_target) is None or 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from scheduler.policy.estimate import MemoryEstimate, estimate_for_spec
from worker.spec.job import JobSpec


class SpecJson(Protocol):
    """The JSON a spec's estimate needs (server.services.paths.SpecFiles): None where it cannot be read."""

    @property
    def model_config(self) -> dict[str, Any] | None: ...
    @property
    def deepspeed_config(self) -> dict[str, Any] | None: ...


# How a decision gets the JSON of a spec: read on the loop's side, at most once per attempt (scheduler.attempts).
SpecJsonOf = Callable[[JobSpec], SpecJson]


def estimate_with(files: SpecJson, spec: JobSpec) -> MemoryEstimate | None:
    """The spec's per-GPU estimate; None when the model's config cannot be read as a transformer's."""
    if files.model_config is None:
        return None
    try:
        return estimate_for_spec(files.model_config, spec, files.deepspeed_config)
    except ValueError:
        return None


def need_of_stored(spec: dict[str, Any], files_of: SpecJsonOf) -> int:
    """The per-GPU estimate of a stored spec in bytes; 0 when it cannot be made (or the job takes no GPU)."""
    try:
        parsed = JobSpec.model_validate(spec)
    except ValueError:  # a stored spec that no longer validates
        return 0
    found = estimate_with(files_of(parsed), parsed)
    return found.per_gpu if found is not None and int(spec.get("gpus", 1)) > 0 else 0
