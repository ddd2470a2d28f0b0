"""Everything a submitted spec is checked for, in one pass, so that one 422 tells everything.

Keys and values (worker.spec.job), paths (server.services.paths), what the spec needs installed
or a GPU for (worker.preflight.requirements), remote code, and whether this machine can ever
run it (server.services.admission) are checked together. The path checks run on the raw
body's fields when the spec has other problems, so a file's problems come in one
answer, each naming its field, instead of one wave per submission.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.services.admission import Assessment, admission_errors, assess, remote_code_errors, requirement_errors
from server.services.errors import InvalidSpec, describe_error
from server.services.machine import Machine
from server.services.paths import PathFields, SpecFiles, check_paths
from worker.spec.job import JobSpec


def _the_rest(raw: dict[str, Any], errors: list[dict[str, Any]]) -> JobSpec | None:
    """The spec without the keys that have problems, when that much is valid; None otherwise."""
    bad = {error["field"].split(".")[0] for error in errors}
    try:
        return JobSpec.model_validate({key: value for key, value in raw.items() if key not in bad})
    except ValidationError:
        return None


@dataclass(frozen=True)
class Checked:
    """A spec that passed every check: its paths absolute and real, the JSON read for it, its assessment."""

    spec: JobSpec
    files: SpecFiles
    assessment: Assessment


def check_submission(
    raw: dict[str, Any],
    input_dirs: list[Path],
    output_dirs: list[Path],
    machine: Machine,
    allow_remote_code: bool = False,
) -> Checked:
    """The checked spec, or InvalidSpec with every problem of `raw` at once."""
    errors: list[dict[str, Any]] = []
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        errors += [describe_error(e) for e in exc.errors()]
    spec_errors = list(errors)
    errors += remote_code_errors(raw.get("trust_remote_code") is True, allow_remote_code)
    update: dict[str, Any] = {}
    files = SpecFiles()
    paths_ok = True
    try:
        update, files = check_paths(PathFields.of(spec if spec is not None else raw), input_dirs, output_dirs)
    except InvalidSpec as exc:
        errors += exc.errors or []
        paths_ok = False
    rest = spec if spec is not None else _the_rest(raw, spec_errors)
    if rest is not None:  # what the spec needs installed, from the keys that are fine when others are not
        errors += requirement_errors(rest, files.model_config)
    if spec is None:
        raise InvalidSpec.from_errors(errors)
    if not paths_ok:
        raise InvalidSpec.from_errors(errors + admission_errors(spec, Assessment(), machine.gpus, machine.cpu_slots))
    resolved = spec.model_copy(update=update)
    assessment = assess(
        resolved, machine.gpus, set(machine.holders), machine.margin_bytes, machine.topology, files=files
    )
    errors += admission_errors(resolved, assessment, machine.gpus, machine.cpu_slots)
    if errors:
        raise InvalidSpec.from_errors(errors)
    return Checked(resolved, files, assessment)
