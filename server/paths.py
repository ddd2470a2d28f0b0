"""Where a spec may read from: its paths resolved and checked against the daemon's input dirs, in bounded time.

A spec names a model directory, a dataset directory and perhaps a DeepSpeed
config on the daemon's machine. Relative paths resolve against the first input
dir; every path, after symlinks, must lie inside one of them, so no spec reads
what the daemon was not given. Each file is read through worker.confine (regular
files only, never blocking on a FIFO, JSON at most JSON_LIMIT), every file of the
model directory is checked the way the worker checks it (worker.modelfiles), every
dataset the way the worker resolves it (worker.dataset_info: what ftq refuses, and
the first rows of each file for the mapped columns), and the whole check runs in
a thread of its own that the request waits for at most CHECK_TIMEOUT_S: a stuck
network filesystem holds that thread, not the request.

The worker checks all of it again when it reads (the files may change after
submit); this is so that a person hears of a bad path at once, with every other
problem of the spec.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from server.errors import InvalidSpec, Unavailable, field_error
from worker.confine import (
    BadFile,
    check_dir,
    files_of,
    read_json,
    real_path,
    show,
    within,
)
from worker.confine import read_json_object as read_confined_object
from worker.data_checks import interleave_probs_problems, tokenized_path_problem
from worker.dataset_info import check_entry
from worker.modelfiles import check_model_files
from worker.spec import JobSpec

# How long a request waits for the checks of its paths. Local disks answer in milliseconds; a model directory
# of a few hundred shards on a network filesystem in well under a second. Ten seconds says "stuck".
CHECK_TIMEOUT_S = 10.0
# Checks that may run at once. A check stuck on a filesystem keeps its thread (a blocked read cannot be
# interrupted); past this many, a request waits CHECK_TIMEOUT_S for a free one and is then told to come back,
# so that a hung mount cannot make the daemon pile up threads without end.
MAX_CHECKS = 16
_checks = threading.BoundedSemaphore(MAX_CHECKS)

T = TypeVar("T")


@dataclass(frozen=True)
class SpecFiles:
    """The JSON the daemon read for a spec at submit, kept for its estimate so nothing is read twice."""

    model_config: dict[str, Any] | None = None
    deepspeed_config: dict[str, Any] | None = None


@dataclass
class _Reading:
    """Which field's path the check is on, for the message when it takes too long."""

    field: str = "model_name_or_path"
    path: str = ""

    def at(self, field: str, path: str | os.PathLike[str]) -> None:
        self.field, self.path = field, os.fspath(path)


def check_spec_inputs(
    spec: JobSpec, roots: list[Path], timeout_s: float = CHECK_TIMEOUT_S, output_roots: list[Path] | None = None
) -> tuple[JobSpec, SpecFiles]:
    """The spec with absolute real paths and the JSON read for it, or InvalidSpec naming every bad field.

    `output_roots`: the daemon's output dirs, where tokenized_path must lie (None: not checked here; the worker
    checks it against FTQ_OUTPUT_DIRS).
    """
    reading = _Reading()
    real_roots = [os.path.realpath(root) for root in roots]
    real_outputs = None if output_roots is None else [os.path.realpath(root) for root in output_roots]
    return bounded(lambda: _check(spec, real_roots, reading, real_outputs), timeout_s, reading)


def resolve_spec_paths(spec: JobSpec, roots: list[Path]) -> JobSpec:
    """The spec with absolute real paths, or InvalidSpec naming every bad field."""
    return check_spec_inputs(spec, roots)[0]


def bounded(check: Callable[[], T], timeout_s: float, reading: _Reading) -> T:
    """`check()` in a thread of its own, waited for at most `timeout_s`; InvalidSpec names the path it was on.

    A plain daemon thread rather than an executor: an executor's threads are joined when the interpreter
    exits, and one stuck in a read on a hung mount would keep the daemon from ever exiting.
    """
    slots = _checks  # the one acquired is the one released, whatever happens to the name meanwhile
    if not slots.acquire(timeout=timeout_s):
        raise Unavailable(
            f"{MAX_CHECKS} earlier checks of spec paths are still waiting on the filesystem (a stuck network "
            "mount?); the job was not queued; try again later"
        )
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = check()
        except BaseException as exc:  # handed to the request's thread, which raises it
            outcome["error"] = exc
        finally:
            slots.release()
            done.set()

    threading.Thread(target=run, name="ftq-check-paths", daemon=True).start()
    if not done.wait(timeout_s):
        raise InvalidSpec.from_errors(
            [
                field_error(
                    reading.field,
                    f"reading {show(reading.path)} took longer than {timeout_s:g} s (a stuck network "
                    "filesystem?); the job was not queued",
                )
            ]
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _absolute(raw: str, roots: list[str]) -> str:
    path = os.path.expanduser(raw)  # os.path's: an unknown ~user stays as it is instead of raising
    return path if os.path.isabs(path) else os.path.join(roots[0], path)


def _check(
    spec: JobSpec, roots: list[str], reading: _Reading, output_roots: list[str] | None = None
) -> tuple[JobSpec, SpecFiles]:
    errors: list[dict[str, Any]] = []
    model_dir = _resolve_dir("model_name_or_path", spec.model_name_or_path, roots, errors, reading)
    model_config = _check_model(model_dir, roots, errors, reading) if model_dir is not None else None
    data_dir = _resolve_dir("dataset_dir", spec.dataset_dir, roots, errors, reading)
    if data_dir is not None:
        _check_datasets(spec, data_dir, roots, errors, reading)
    update = {"model_name_or_path": str(model_dir), "dataset_dir": str(data_dir)}
    deepspeed_config = None
    if spec.deepspeed is not None:
        deepspeed, deepspeed_config = _check_deepspeed(spec.deepspeed, roots, errors, reading)
        update["deepspeed"] = str(deepspeed)
    if spec.tokenized_path is not None and output_roots is not None:
        problem = tokenized_path_problem(spec.tokenized_path, output_roots)
        if problem:
            errors.append(field_error("tokenized_path", problem.removeprefix("tokenized_path: ")))
    if errors:
        raise InvalidSpec.from_errors(errors)
    return spec.model_copy(update=update), SpecFiles(model_config, deepspeed_config)


def _resolve_dir(
    field: str, raw: str, roots: list[str], errors: list[dict[str, Any]], reading: _Reading
) -> Path | None:
    path = _absolute(raw, roots)
    reading.at(field, path)
    try:
        return Path(check_dir(path, roots))
    except BadFile as exc:
        errors.append(field_error(field, str(exc)))
        return None


def _check_model(
    model_dir: Path, roots: list[str], errors: list[dict[str, Any]], reading: _Reading
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
    raw: str, roots: list[str], errors: list[dict[str, Any]], reading: _Reading
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


def _check_datasets(
    spec: JobSpec, data_dir: Path, roots: list[str], errors: list[dict[str, Any]], reading: _Reading
) -> None:
    info_path = data_dir / "dataset_info.json"
    reading.at("dataset_dir", info_path)
    if not os.path.lexists(info_path):
        errors.append(
            field_error(
                "dataset_dir",
                f"{info_path} does not exist; a dataset_dir needs a dataset_info.json (LLaMA-Factory's format)",
            )
        )
        return
    try:
        info = read_json(info_path, roots)
    except BadFile as exc:
        errors.append(field_error("dataset_dir", str(exc)))
        return
    if not isinstance(info, dict):
        errors.append(field_error("dataset_dir", f"{info_path} must hold a JSON object of dataset entries"))
        return
    names = {"dataset": spec.dataset_names, "eval_dataset": spec.eval_dataset_names}
    for field, field_names in names.items():
        for name in field_names:
            _check_dataset(field, name, info, info_path, data_dir, roots, errors, reading)
    counts = {field: len(field_names) for field, field_names in names.items()}
    for problem in interleave_probs_problems(spec.interleave_probs, counts):
        errors.append(field_error("interleave_probs", problem))


def _check_dataset(
    field: str,
    name: str,
    info: dict[str, Any],
    info_path: Path,
    data_dir: Path,
    roots: list[str],
    errors: list[dict[str, Any]],
    reading: _Reading,
) -> None:
    entry = info.get(name)
    if not isinstance(entry, dict):
        known = ", ".join(sorted(info)) or "none"
        errors.append(field_error(field, f"{name!r} is not in {info_path} (it has: {known})"))
        return
    file_name = entry.get("file_name")
    if not isinstance(file_name, str):
        errors.append(
            field_error(
                field,
                f"{name!r} has no local file_name in {info_path}; hub datasets "
                "cannot be fetched here, download it and name the file",
            )
        )
        return
    file_path = data_dir / file_name
    reading.at(field, file_path)
    try:
        escapes = not within(os.path.realpath(file_path), [str(data_dir)])
    except (OSError, ValueError):
        escapes = False  # a name that cannot be resolved: files_of says why
    if escapes:
        errors.append(field_error(field, f"{name!r}: {show(file_name)} escapes {data_dir}"))
        return
    try:
        files_of(file_path, roots)
    except BadFile as exc:
        errors.append(field_error(field, f"{name!r}: {exc}"))
        return
    # What the worker refuses too (worker.dataset_info): preference, prompt-only and multimodal data, unknown
    # formatting and file types, and files whose first rows lack the mapped columns.
    errors += [field_error(field, problem) for problem in check_entry(name, entry, info_path, roots)[1]]
