"""Relative paths in a job file mean what they meant to `llamafactory-cli`: relative to where the command runs.

`ftq submit` sends the daemon absolute paths, so a file written for
`llamafactory-cli train` (`dataset_dir: data`, `deepspeed: examples/deepspeed/
ds_z3_config.json`) finds the same files when submitted from the same
directory. The daemon still confines every path to its FTQ_INPUT_DIRS.

`model_name_or_path` and `adapter_name_or_path` are resolved only when they are
paths (they exist there, or are written as one: `/`, `./`, `../`, `~`); a hub id
(`Qwen/Qwen2.5-0.5B-Instruct`) is sent as it is, and the daemon says how to make
a local copy. `output_dir` is left as it is: the daemon writes it inside its
FTQ_OUTPUT_DIRS, relative to the first (the job's notes say where).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ALWAYS_PATHS = ("dataset_dir", "deepspeed", "tokenized_path")
MAYBE_PATHS = ("model_name_or_path", "adapter_name_or_path")  # comma lists for adapters, as LLaMA-Factory has it
DATASET_DIR_DEFAULT = "data"  # LLaMA-Factory's


def absolute_paths(spec: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """The spec with its relative paths made absolute against `cwd`, as llamafactory-cli would read them."""
    resolved = dict(spec)
    if "dataset" in spec and "dataset_dir" not in spec:
        resolved["dataset_dir"] = DATASET_DIR_DEFAULT
    for key in ALWAYS_PATHS:
        value = resolved.get(key)
        if isinstance(value, str) and value and not value.startswith("REMOTE:"):  # a hub dataset dir: the daemon says
            resolved[key] = _absolute(value, cwd)
    for key in MAYBE_PATHS:
        value = resolved.get(key)
        if isinstance(value, str) and value:
            parts = [part.strip() for part in value.split(",")]
            resolved[key] = ",".join(_absolute(p, cwd) if _is_path(p, cwd) else p for p in parts)
    return resolved


def _is_path(value: str, cwd: Path) -> bool:
    written_as_path = value.startswith(("/", "./", "../", "~")) or value in (".", "..")
    return written_as_path or os.path.lexists(cwd / value)


def _absolute(value: str, cwd: Path) -> str:
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else cwd / path)
