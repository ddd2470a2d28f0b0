"""The data fields of a spec checked before a model loads: the datasets, interleave_probs, tokenized_path.

Pure (os; worker.preflight.dataset_info for the datasets): the server calls these at submit,
the worker (worker.run.validate) again when it starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.preflight.confine import Roots, show, within
from worker.preflight.dataset_info import DataError, resolve_datasets

# numpy's choice(p=...) (what datasets.interleave_datasets draws with) wants the probabilities to sum to 1 within
# about 1.5e-8; "0.333,0.333,0.334" sums to 1 exactly.
PROBS_TOLERANCE = 1e-8


def parse_interleave_probs(text: str | None) -> list[float] | None:
    """LLaMA-Factory's interleave_probs, "0.7,0.3", as floats; ValueError names the bad value."""
    if text is None:
        return None
    probs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"interleave_probs: {part!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"interleave_probs: {part!r} is not a probability (a number from 0 to 1)")
        probs.append(value)
    return probs


def interleave_probs_problems(text: str | None, counts: dict[str, int]) -> list[str]:
    """One value per dataset of `dataset` and of `eval_dataset` (counts: field -> number of names), summing to 1.

    LLaMA-Factory mixes the eval datasets with the same probabilities, so both counts must match.
    """
    try:
        probs = parse_interleave_probs(text)
    except ValueError as exc:
        return [str(exc)]
    if probs is None:
        return []
    problems = [
        f"interleave_probs has {len(probs)} values and {field} names {count} datasets; give one per dataset"
        + (" (LLaMA-Factory mixes eval_dataset with the same probabilities)" if field == "eval_dataset" else "")
        for field, count in counts.items()
        if count and count != len(probs)
    ]
    if abs(sum(probs) - 1) > PROBS_TOLERANCE:
        problems.append(f"interleave_probs sum to {sum(probs):g}; they must sum to 1")
    return problems


def output_location(raw: str, output_roots: Roots) -> Path:
    """Where a path the job writes (tokenized_path, output_dir) points: absolute as given, relative to the first
    output dir (or the cwd unconfined)."""
    path = os.path.expanduser(raw)
    if not os.path.isabs(path) and output_roots:
        path = os.path.join(output_roots[0], path)
    return Path(os.path.abspath(path))


def tokenized_path_problem(raw: str, output_roots: Roots) -> str | None:
    """Why the tokenized set cannot live at `raw`: it must lie inside an output dir (FTQ_OUTPUT_DIRS), below it.

    The set is written there, and read back only from there (worker.data.tokenized), so output dirs alone confine it.
    """
    if output_roots is None:
        return None  # a worker run by hand: nothing to confine to
    if not output_roots:
        return (
            "tokenized_path: this daemon names no output dirs (FTQ_OUTPUT_DIRS), so a tokenized set cannot be "
            "written anywhere; drop tokenized_path"
        )
    path = output_location(raw, output_roots)
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        return f"tokenized_path: {show(path)} cannot be resolved ({exc})"
    if not within(real, output_roots) or real in output_roots:
        return (
            f"tokenized_path: {show(path)} must lie inside one of the daemon's output dirs "
            f"({', '.join(output_roots)}; symlinks resolved), below it, where ftq may write"
        )
    return None


def data_problems(fields: Mapping[str, Any], roots: Roots, output_roots: Roots) -> list[tuple[str, str]]:
    """(field, message) for every data problem of a spec's fields (a raw dict: a bad field elsewhere must not
    hide these): dataset and eval_dataset (worker.preflight.dataset_info, first rows peeked), interleave_probs and
    tokenized_path. The worker calls it when it starts; the server's own check
    (server.services.paths) calls its parts."""
    problems: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    dataset_dir = fields.get("dataset_dir") or "data"
    for field in ("dataset", "eval_dataset"):
        value = fields.get(field)
        if not isinstance(value, str) or not isinstance(dataset_dir, str):
            continue
        names = [name.strip() for name in value.split(",") if name.strip()]
        counts[field] = len(names)
        try:
            resolve_datasets(names, dataset_dir, roots)
        except DataError as exc:
            problems.append((field, str(exc)))
    if isinstance(fields.get("interleave_probs"), str):
        problems += [("interleave_probs", p) for p in interleave_probs_problems(fields["interleave_probs"], counts)]
    if isinstance(fields.get("tokenized_path"), str):
        problem = tokenized_path_problem(fields["tokenized_path"], output_roots)
        if problem:
            problems.append(("tokenized_path", problem))
    return problems
