"""A spec's datasets checked as the worker will read them: dataset_info.json, each entry, its file, its rows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from server.services.bounded_check import Reading
from server.services.errors import field_error
from worker.preflight.confine import BadFile, files_of, read_json, show, within
from worker.preflight.data_checks import interleave_probs_problems
from worker.preflight.dataset_info import check_entry


def check_datasets(
    names: dict[str, tuple[str, ...]],
    interleave_probs: str | None,
    data_dir: Path,
    roots: list[str],
    errors: list[dict[str, Any]],
    reading: Reading,
) -> None:
    """Each dataset named (by field: dataset, eval_dataset) in `data_dir`'s dataset_info.json; problems to `errors`."""
    if not any(names.values()):
        return
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
    for field, field_names in names.items():
        for name in field_names:
            _check_dataset(field, name, info, info_path, data_dir, roots, errors, reading)
    counts = {field: len(field_names) for field, field_names in names.items()}
    for problem in interleave_probs_problems(interleave_probs, counts):
        errors.append(field_error("interleave_probs", problem))


def _check_dataset(
    field: str,
    name: str,
    info: dict[str, Any],
    info_path: Path,
    data_dir: Path,
    roots: list[str],
    errors: list[dict[str, Any]],
    reading: Reading,
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
    # What the worker refuses too (worker.preflight.dataset_info): preference, prompt-only and multimodal data, unknown
    # formatting and file types, and files whose first rows lack the mapped columns.
    errors += [field_error(field, problem) for problem in check_entry(name, entry, info_path, roots)[1]]
