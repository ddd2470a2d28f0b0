"""Where a spec may read from: its paths resolved and checked against the daemon's input dirs.

A spec names a model directory and a dataset directory on the daemon's machine.
Relative paths resolve against the first input dir; every path, after symlinks,
must lie inside one of them, so no spec reads what the daemon was not given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.errors import InvalidSpec, field_error
from worker.spec import JobSpec


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _resolve(field: str, raw: str, roots: list[Path], errors: list[dict[str, Any]]) -> Path | None:
    path = Path(raw).expanduser()
    path = (path if path.is_absolute() else roots[0] / path).resolve()
    if not _within(path, roots):
        allowed = ", ".join(str(r) for r in roots)
        errors.append(
            field_error(
                field,
                f"{raw} is outside the directories this daemon may read ({allowed}); "
                "move it there or add its directory to FTQ_INPUT_DIRS",
            )
        )
        return None
    if not path.is_dir():
        errors.append(field_error(field, f"{raw} (resolved to {path}) is not a directory on the daemon's machine"))
        return None
    return path


def resolve_spec_paths(spec: JobSpec, roots: list[Path]) -> JobSpec:
    """The spec with absolute model and dataset paths, or InvalidSpec naming every bad field."""
    errors: list[dict[str, Any]] = []
    model_dir = _resolve("model_name_or_path", spec.model_name_or_path, roots, errors)
    if model_dir is not None and not (model_dir / "config.json").is_file():
        errors.append(
            field_error(
                "model_name_or_path",
                f"{model_dir} has no config.json; point it at a local transformers model directory",
            )
        )
    data_dir = _resolve("dataset_dir", spec.dataset_dir, roots, errors)
    if data_dir is not None:
        _check_datasets(spec, data_dir, roots, errors)
    update = {"model_name_or_path": str(model_dir), "dataset_dir": str(data_dir)}
    if spec.deepspeed is not None:
        update["deepspeed"] = str(_resolve_deepspeed(spec.deepspeed, roots, errors))
    if errors:
        raise InvalidSpec.from_errors(errors)
    return spec.model_copy(update=update)


def _resolve_deepspeed(raw: str, roots: list[Path], errors: list[dict[str, Any]]) -> Path | None:
    path = Path(raw).expanduser()
    path = (path if path.is_absolute() else roots[0] / path).resolve()
    if not _within(path, roots):
        errors.append(
            field_error(
                "deepspeed",
                f"{raw} is outside the directories this daemon may read; "
                "use one of configs/deepspeed/*.json or add its directory to FTQ_INPUT_DIRS",
            )
        )
        return None
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        errors.append(field_error("deepspeed", f"{path} does not exist (configs/deepspeed/ has ds_z0/z2/z3 configs)"))
        return None
    except (OSError, json.JSONDecodeError) as exc:
        errors.append(field_error("deepspeed", f"{path} is not a readable JSON file: {exc}"))
        return None
    if not isinstance(config, dict):
        errors.append(field_error("deepspeed", f"{path} must hold a JSON object"))
        return None
    return path


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A small JSON file (a model's config.json, a DeepSpeed config) as a dict, or None."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _check_datasets(spec: JobSpec, data_dir: Path, roots: list[Path], errors: list[dict[str, Any]]) -> None:
    info_path = data_dir / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text())
    except FileNotFoundError:
        errors.append(
            field_error(
                "dataset_dir",
                f"{info_path} does not exist; a dataset_dir needs a dataset_info.json (LLaMA-Factory's format)",
            )
        )
        return
    except (OSError, json.JSONDecodeError) as exc:
        errors.append(field_error("dataset_dir", f"{info_path} cannot be read as JSON: {exc}"))
        return
    if not isinstance(info, dict):
        errors.append(field_error("dataset_dir", f"{info_path} must hold a JSON object of dataset entries"))
        return
    for name in spec.dataset_names:
        entry = info.get(name)
        if not isinstance(entry, dict):
            known = ", ".join(sorted(info)) or "none"
            errors.append(field_error("dataset", f"{name!r} is not in {info_path} (it has: {known})"))
            continue
        file_name = entry.get("file_name")
        if not isinstance(file_name, str):
            errors.append(
                field_error(
                    "dataset",
                    f"{name!r} has no local file_name in {info_path}; hub datasets "
                    "cannot be fetched here, download it and name the file",
                )
            )
            continue
        file_path = (data_dir / file_name).resolve()
        if not _within(file_path, roots) or not _within(file_path, [data_dir]):
            errors.append(field_error("dataset", f"{name!r}: {file_name} escapes {data_dir}"))
        elif not file_path.exists():
            errors.append(field_error("dataset", f"{name!r}: {file_path} does not exist"))
