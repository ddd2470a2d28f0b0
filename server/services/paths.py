"""Where a spec may read from: its paths resolved and checked against the daemon's input dirs, in bounded time.

A spec names a model directory, a dataset directory and perhaps a DeepSpeed
config on the daemon's machine. Relative paths resolve against the first input
dir; every path, after symlinks, must lie inside one of them, so no spec reads
what the daemon was not given. Each file is read through worker.preflight.confine (regular
files only, never blocking on a FIFO, JSON at most JSON_LIMIT), every file of the
model directory is checked the way the worker checks it (worker.preflight.modelfiles), every
dataset the way the worker resolves it (server.services.dataset_checks), and the
whole check runs in a thread of its own that the request waits for at most
CHECK_TIMEOUT_S (server.services.bounded_check): a stuck network filesystem holds
that thread, not the request.

The worker checks all of it again when it reads (the files may change after
submit); this is so that a person hears of a bad path at once, with every other
problem of the spec.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.services.bounded_check import CHECK_TIMEOUT_S, Reading, bounded
from server.services.dataset_checks import check_datasets
from server.services.errors import InvalidSpec, field_error
from worker.preflight.confine import BadFile, check_dir, real_path, show, within
from worker.preflight.confine import read_json_object as read_confined_object
from worker.preflight.data_checks import output_location, tokenized_path_problem
from worker.preflight.modelfiles import check_model_files
from worker.spec.job import JobSpec


@dataclass(frozen=True)
class SpecFiles:
    """The JSON the daemon read for a spec at submit, kept for its estimate so nothing is read twice."""

    model_config: dict[str, Any] | None = None
    deepspeed_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class PathFields:
    """The fields of a spec that name paths, taken from a valid spec or, when it has other problems, from
    the raw body (where their types are right), so that a bad path is reported with every other problem."""

    model_name_or_path: str | None = None
    dataset_dir: str = "data"
    dataset_names: tuple[str, ...] = ()
    eval_dataset_names: tuple[str, ...] = ()
    deepspeed: str | None = None
    adapter_paths: tuple[str, ...] = ()
    tokenized_path: str | None = None
    output_dir: str | None = None
    overwrite_output_dir: bool = False
    interleave_probs: str | None = None  # not a path, but checked against the datasets the paths lead to

    @classmethod
    def of(cls, source: JobSpec | Mapping[str, Any]) -> PathFields:
        if isinstance(source, JobSpec):
            return cls(
                source.model_name_or_path,
                source.dataset_dir,
                tuple(source.dataset_names),
                tuple(source.eval_dataset_names),
                source.deepspeed,
                tuple(source.adapter_paths),
                source.tokenized_path,
                source.output_dir,
                source.overwrite_output_dir,
                source.interleave_probs,
            )

        def text(key: str) -> str | None:
            value = source.get(key)
            return value if isinstance(value, str) and value and "\x00" not in value else None

        def names(key: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in (text(key) or "").split(",") if part.strip())

        return cls(
            text("model_name_or_path"),
            text("dataset_dir") or "data",
            names("dataset"),
            names("eval_dataset"),
            text("deepspeed"),
            names("adapter_name_or_path"),
            text("tokenized_path"),
            text("output_dir"),
            source.get("overwrite_output_dir") is True,
            text("interleave_probs"),
        )


def check_spec_inputs(
    spec: JobSpec, roots: list[Path], timeout_s: float = CHECK_TIMEOUT_S, output_roots: list[Path] | None = None
) -> tuple[JobSpec, SpecFiles]:
    """The spec with absolute real paths and the JSON read for it, or InvalidSpec naming every bad field."""
    update, files = check_paths(PathFields.of(spec), roots, output_roots or [], timeout_s)
    return spec.model_copy(update=update), files


def check_paths(
    fields: PathFields, roots: list[Path], output_roots: list[Path], timeout_s: float = CHECK_TIMEOUT_S
) -> tuple[dict[str, Any], SpecFiles]:
    """Every path field checked: (the fields made absolute and real, the JSON read), or InvalidSpec."""
    reading = Reading()
    real_roots = [os.path.realpath(root) for root in roots]
    real_outputs = [os.path.realpath(root) for root in output_roots]
    return bounded(lambda: _check(fields, real_roots, real_outputs, reading), timeout_s, reading)


def resolve_spec_paths(spec: JobSpec, roots: list[Path]) -> JobSpec:
    """The spec with absolute real paths, or InvalidSpec naming every bad field."""
    return check_spec_inputs(spec, roots)[0]


def _absolute(raw: str, roots: list[str]) -> str:
    path = os.path.expanduser(raw)  # os.path's: an unknown ~user stays as it is instead of raising
    return path if os.path.isabs(path) else os.path.join(roots[0], path)


def _check(
    fields: PathFields, roots: list[str], output_roots: list[str], reading: Reading
) -> tuple[dict[str, Any], SpecFiles]:
    errors: list[dict[str, Any]] = []
    update: dict[str, Any] = {}
    model_config = None
    if fields.model_name_or_path is not None:
        model_dir = _resolve_model_dir(fields.model_name_or_path, roots, errors, reading)
        if model_dir is not None:
            model_config = _check_model(model_dir, roots, errors, reading)
            update["model_name_or_path"] = str(model_dir)
    if fields.dataset_dir.startswith(REMOTE):
        errors.append(
            field_error(
                "dataset_dir",
                f"{show(fields.dataset_dir)} is a dataset dir on a hub (LLaMA-Factory's REMOTE:), and the daemon "
                "reads local directories only: download it and set dataset_dir to that directory",
            )
        )
        data_dir = None
    else:
        data_dir = _resolve_dir("dataset_dir", fields.dataset_dir, roots, errors, reading)
    if data_dir is not None:
        update["dataset_dir"] = str(data_dir)
        names = {"dataset": fields.dataset_names, "eval_dataset": fields.eval_dataset_names}
        check_datasets(names, fields.interleave_probs, data_dir, roots, errors, reading)
    if fields.adapter_paths:
        adapters = [_check_adapter(path, roots, errors, reading) for path in fields.adapter_paths]
        if all(adapters):
            update["adapter_name_or_path"] = ",".join(str(a) for a in adapters)
    deepspeed_config = None
    if fields.deepspeed is not None:
        deepspeed, deepspeed_config = _check_deepspeed(fields.deepspeed, roots, errors, reading)
        update["deepspeed"] = str(deepspeed)
    if fields.output_dir is not None:
        written = _check_output(
            "output_dir", fields.output_dir, output_roots, errors, reading, fields.overwrite_output_dir
        )
        if written is not None:
            update["output_dir"] = written
    if fields.tokenized_path is not None:
        problem = tokenized_path_problem(fields.tokenized_path, output_roots)
        if problem:
            errors.append(field_error("tokenized_path", problem.removeprefix("tokenized_path: ")))
        else:
            update["tokenized_path"] = str(output_location(fields.tokenized_path, output_roots))
    if errors:
        raise InvalidSpec.from_errors(errors)
    return update, SpecFiles(model_config, deepspeed_config)


REMOTE = "REMOTE:"  # LLaMA-Factory's prefix for a dataset_dir on the ModelScope / Hugging Face hub
# A name LLaMA-Factory would fetch from the Hugging Face Hub: owner/name, nothing more.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _resolve_model_dir(raw: str, roots: list[str], errors: list[dict[str, Any]], reading: Reading) -> Path | None:
    """The model directory; a hub id that names no local directory gets how to make a local copy."""
    if HUB_ID.match(raw) and not os.path.lexists(_absolute(raw, roots)):
        errors.append(field_error("model_name_or_path", hub_refusal(raw, roots)))
        return None
    return _resolve_dir("model_name_or_path", raw, roots, errors, reading)


def hub_refusal(model_id: str, roots: list[str]) -> str:
    where = ", ".join(show(root) for root in roots)
    return (
        f"{model_id!r} looks like a Hugging Face Hub id, and the daemon loads models from local directories only "
        f"(it has no network). On a machine with network access run `huggingface-cli download {model_id} "
        f"--local-dir DIR`, put DIR inside a directory the daemon may read ({where}; FTQ_INPUT_DIRS), and set "
        "model_name_or_path to it"
    )


def _check_adapter(raw: str, roots: list[str], errors: list[dict[str, Any]], reading: Reading) -> Path | None:
    """An adapter directory: inside the input dirs, with peft's adapter_config.json."""
    if HUB_ID.match(raw) and not os.path.lexists(_absolute(raw, roots)):
        errors.append(field_error("adapter_name_or_path", hub_refusal(raw, roots)))
        return None
    adapter = _resolve_dir("adapter_name_or_path", raw, roots, errors, reading)
    if adapter is None:
        return None
    config = adapter / "adapter_config.json"
    reading.at("adapter_name_or_path", config)
    try:
        read_confined_object(config, roots)
    except BadFile as exc:
        errors.append(field_error("adapter_name_or_path", f"{exc} (a peft adapter directory has adapter_config.json)"))
        return None
    return adapter


# Files that say an output_dir already holds a trained model (LLaMA-Factory's CHECKPOINT_NAMES, in short).
MODEL_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")


def _check_output(
    key: str, raw: str, output_roots: list[str], errors: list[dict[str, Any]], reading: Reading, overwrite: bool
) -> str | None:
    """A directory ftq will write: inside FTQ_OUTPUT_DIRS (relative to the first), and, for output_dir, not
    holding a model already unless overwrite_output_dir (LLaMA-Factory's rule)."""
    if not output_roots:
        errors.append(field_error(key, "this daemon has no output dirs (FTQ_OUTPUT_DIRS) to write it in"))
        return None
    path = str(output_location(raw, output_roots))
    reading.at(key, path)
    try:
        real = os.path.realpath(path)  # it need not exist yet: what counts is where it would be written
    except (OSError, ValueError) as exc:
        errors.append(field_error(key, f"{show(path)} cannot be resolved ({exc})"))
        return None
    if not within(real, output_roots):
        errors.append(
            field_error(
                key,
                f"{show(path)} lies outside the directories this daemon may write (FTQ_OUTPUT_DIRS: "
                f"{', '.join(map(show, output_roots))}): choose a path there, or remove the key (the result "
                "stays in the job's run dir)",
            )
        )
        return None
    if os.path.lexists(real) and not os.path.isdir(real):
        errors.append(field_error(key, f"{show(real)} exists and is not a directory"))
        return None
    if key == "output_dir" and not overwrite and any(os.path.lexists(os.path.join(real, n)) for n in MODEL_FILES):
        errors.append(
            field_error(
                key,
                f"{show(real)} already holds a trained model; set overwrite_output_dir: true, or choose another "
                "output_dir",
            )
        )
        return None
    return real


def _resolve_dir(field: str, raw: str, roots: list[str], errors: list[dict[str, Any]], reading: Reading) -> Path | None:
    path = _absolute(raw, roots)
    reading.at(field, path)
    try:
        return Path(check_dir(path, roots))
    except BadFile as exc:
        errors.append(field_error(field, str(exc)))
        return None


def _check_model(
    model_dir: Path, roots: list[str], errors: list[dict[str, Any]], reading: Reading
) -> dict[str, Any] | None:
    """The model's config.json (read for the estimate), and every file of the directory as the worker wants it."""
    config_path = model_dir / "config.json"
    reading.at("model_name_or_path", config_path)
    config = None
    if not os.path.lexists(config_path):
        errors.append(
            field_error(
                "model_name_or_path",
                f"{model_dir} has no config.json; point it at a local transformers model directory",
            )
        )
    else:
        try:
            config = read_confined_object(config_path, roots)
        except BadFile as exc:
            errors.append(field_error("model_name_or_path", f"{exc} (the model's config.json)"))
    reading.at("model_name_or_path", model_dir)
    errors += [field_error("model_name_or_path", problem) for problem in check_model_files(model_dir, roots)]
    return config


def _check_deepspeed(
    raw: str, roots: list[str], errors: list[dict[str, Any]], reading: Reading
) -> tuple[str | None, dict[str, Any] | None]:
    path = _absolute(raw, roots)
    reading.at("deepspeed", path)
    try:
        config = read_confined_object(path, roots)
        return real_path(path, roots), config
    except BadFile as exc:
        errors.append(field_error("deepspeed", f"{exc} (configs/deepspeed/ has ds_z0/z2/z3 configs)"))
    return None, None


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A small JSON file (a model's config.json, a DeepSpeed config) as a dict, or None.

    For a stored spec whose paths were checked at submit (an OOM retry re-estimates it): regular files
    only, never blocking, at most JSON_LIMIT.
    """
    try:
        return read_confined_object(path, None)
    except BadFile:
        return None


def read_spec_files(spec: JobSpec) -> SpecFiles:
    """The JSON a stored spec's estimate needs, read again (None where it cannot be read)."""
    config = read_json_object(Path(spec.model_name_or_path) / "config.json")
    deepspeed = read_json_object(Path(spec.deepspeed)) if spec.deepspeed else None
    return SpecFiles(config, deepspeed)
