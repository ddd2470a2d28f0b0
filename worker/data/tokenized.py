"""tokenized_path: a tokenized set saved once and reused by the next job that names it, never reused wrong.

LLaMA-Factory loads whatever lies at tokenized_path (load_from_disk) and ignores
every other data argument; otherwise it tokenizes and saves there. ftq is
stricter, on purpose:

- A saved set records what it was made from (its recipe: the datasets, their
  dataset_info.json entries and every file's real path, size and mtime, the
  template and the other encoding settings, cutoff_len, the tokenizer, the split,
  ENCODING_VERSION). A set made from anything else is rebuilt, with a log line
  naming what differs. A directory without ftq's manifest (one LLaMA-Factory
  saved, or anything else) is neither reused nor deleted: it is bad input.
- It is written atomically: saved into a temporary directory beside it, flushed
  to disk, then renamed into place, so a crash leaves the old set or the new one
  (or none), never half of one. Leftovers of a crash are removed by the next build.
- One process at a time builds or reads a path (an flock on a file beside it):
  the ranks of a torchrun job, or two jobs naming one path, wait for the first
  and then reuse what it saved.
- It is confined to the daemon's output dirs (FTQ_OUTPUT_DIRS): written only there
  (worker.preflight.data_checks), and read back only from there, through worker.preflight.confine with
  the output dirs as the roots: each arrow file opened with open_fd (a regular
  file, its descriptor's real path inside an output dir) and memory-mapped from
  that descriptor; `datasets` never opens a name by itself (load_from_disk would).
  Input dirs do not count for reading: a set ftq cannot rebuild in place is no use.

Saved with DatasetDict.save_to_disk ("train", and "validation" when there is eval
data), so LLaMA-Factory can load a set ftq made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, DatasetDict, concatenate_datasets

from worker.data.encode import ENCODING_VERSION
from worker.preflight.confine import BadFile, Roots, check_file, open_fd, read_json_object, show
from worker.preflight.data_checks import tokenized_path_problem
from worker.preflight.dataset_info import DataError, DatasetAttr, file_stats
from worker.preflight.modelfiles import TOKENIZER_FILES

log = logging.getLogger(__name__)

MANIFEST = "ftq_tokenized.json"
FORMAT = "ftq-tokenized-1"
SPLITS = ("train", "validation")
# The spec fields that change what a set holds (preprocessing_num_workers and _batch_size do not).
RECIPE_FIELDS = (
    "template", "default_system", "tool_format", "enable_thinking", "cutoff_len", "train_on_prompt", "mask_history",
    "max_samples", "mix_strategy", "interleave_probs", "val_size", "seed",
)  # fmt: skip


def recipe(spec: Any, attrs: list[DatasetAttr], eval_attrs: list[DatasetAttr], tokenizer: Any, roots: Roots) -> dict:
    """What a set is made from, as JSON (compared whole: any difference means another set)."""
    made_from = {
        "encoding": ENCODING_VERSION,
        "datasets": [_dataset(attr, roots) for attr in attrs],
        "eval_datasets": [_dataset(attr, roots) for attr in eval_attrs],
        **{key: getattr(spec, key, None) for key in RECIPE_FIELDS},
        **_packing(spec),
        "tokenizer": _tokenizer(spec.model_name_or_path, tokenizer, roots),
    }
    return json.loads(json.dumps(made_from))  # as it reads back from the manifest


def _packing(spec: Any) -> dict[str, Any]:
    """Packed rows depend on the packing keys and on the preprocessing batches they are packed within; a set
    that is not packed keeps the recipe it always had."""
    if not (getattr(spec, "packing", None) or getattr(spec, "neat_packing", False)):
        return {}
    keys = ("packing", "neat_packing", "preprocessing_batch_size")
    return {"packed": {key: getattr(spec, key, None) for key in keys}}


def _dataset(attr: DatasetAttr, roots: Roots) -> dict[str, Any]:
    return {"name": attr.name, "entry": attr.entry, "files": file_stats(attr, roots)}


def _tokenizer(model_dir: str, tokenizer: Any, roots: Roots) -> dict[str, Any]:
    files = {}
    for name in TOKENIZER_FILES:
        path = Path(model_dir) / name
        if os.path.lexists(path):
            try:
                st = check_file(path, roots)
            except BadFile as exc:
                raise DataError(f"tokenized_path: {exc}") from None
            files[name] = [st.st_size, st.st_mtime_ns]
    template = getattr(tokenizer, "chat_template", None) or ""
    return {
        "path": os.path.realpath(model_dir),
        "class": type(tokenizer).__name__,
        "size": len(tokenizer),
        "chat_template": hashlib.sha256(str(template).encode()).hexdigest(),
        "files": files,
    }


@contextlib.contextmanager
def locked(path: Path, output_roots: Roots) -> Iterator[None]:
    """Hold the path's lock (created beside it, inside an output dir) while building or reading the set."""
    _check(path, output_roots)
    path.parent.mkdir(parents=True, exist_ok=True)
    _check(path, output_roots)  # again, on the directories as they now are
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("tokenized_path %s: waiting for another process that builds or reads it", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check(path: Path, output_roots: Roots) -> None:
    problem = tokenized_path_problem(str(path), output_roots)
    if problem:
        raise DataError(problem)


def load(path: Path, made_from: dict, output_roots: Roots) -> tuple[Dataset, Dataset | None] | None:
    """The saved (train, eval) when a set made from `made_from` lies at `path`; None when it must be (re)built."""
    if not os.path.lexists(path):
        log.info("tokenized_path %s: no set there yet; tokenizing and saving it", path)
        return None
    if not path.is_dir():
        raise DataError(f"tokenized_path {show(path)} is not a directory; remove it or choose another path")
    if not (path / MANIFEST).exists():
        if not any(path.iterdir()):
            return None
        raise DataError(
            f"tokenized_path {show(path)} holds something ftq did not save (no {MANIFEST}; a set LLaMA-Factory "
            "saved has none either): ftq neither reuses a set it cannot check nor deletes it; remove it or choose "
            "another path"
        )
    try:
        manifest = read_json_object(path / MANIFEST, output_roots)
    except BadFile as exc:
        log.warning("tokenized_path %s: %s; rebuilding the set", path, exc)
        return None
    if manifest.get("format") != FORMAT or manifest.get("recipe") != made_from:
        saved = manifest.get("recipe") if isinstance(manifest.get("recipe"), dict) else {}
        changed = sorted(key for key in {**saved, **made_from} if saved.get(key) != made_from.get(key)) or ["format"]
        log.warning("tokenized_path %s was made from other data (%s differ); rebuilding it", path, ", ".join(changed))
        return None
    try:
        splits = {name: _read_split(path, manifest["splits"][name], output_roots) for name in manifest["splits"]}
    except (BadFile, DataError, pa.ArrowException, KeyError, TypeError, ValueError, OSError) as exc:
        log.warning("tokenized_path %s cannot be read back (%s); rebuilding it", path, exc)
        return None
    log.info("tokenized_path %s: reusing the saved set (%s)", path, _counts(splits))
    return splits["train"], splits.get("validation")


def _read_split(path: Path, split: dict[str, Any], roots: Roots) -> Dataset:
    parts = []
    for file in split["files"]:
        fd = open_fd(path / file["name"], roots)
        try:
            size = os.fstat(fd).st_size
            if size != file["size"]:
                raise DataError(f"{file['name']} has {size} bytes, the manifest says {file['size']}")
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        parts.append(Dataset.from_buffer(pa.py_buffer(mapped)))
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(dataset) != split["rows"]:
        raise DataError(f"it holds {len(dataset)} rows, the manifest says {split['rows']}")
    return dataset


def save(path: Path, made_from: dict, train: Dataset, held_out: Dataset | None, output_roots: Roots) -> None:
    """Save the set at `path` atomically, replacing a stale ftq set there (call it holding `locked(path)`)."""
    _check(path, output_roots)
    _remove_leftovers(path)
    splits = {"train": train, **({"validation": held_out} if held_out is not None else {})}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _check(tmp, output_roots)
        DatasetDict(splits).save_to_disk(str(tmp))
        files = {name: _split_files(tmp, name, dataset) for name, dataset in splits.items()}
        manifest = {"format": FORMAT, "recipe": made_from, "splits": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_tree(tmp)
        if os.path.lexists(path):
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rename(path, aside / "set")  # the stale set (or an empty directory), out of the way
            os.rename(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("tokenized_path %s: saved the set (%s)", path, _counts(splits))


def _split_files(root: Path, name: str, dataset: Dataset) -> dict[str, Any]:
    state = json.loads((root / name / "state.json").read_text())  # written by save_to_disk just now
    files = [f"{name}/{entry['filename']}" for entry in state["_data_files"]]
    return {"rows": len(dataset), "files": [{"name": f, "size": (root / f).stat().st_size} for f in files]}


def _remove_leftovers(path: Path) -> None:
    for sibling in path.parent.iterdir():
        if sibling.name.startswith((f".{path.name}.tmp-", f".{path.name}.old-")):
            log.info("tokenized_path %s: removing %s, left by a build that did not finish", path, sibling.name)
            shutil.rmtree(sibling, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _counts(splits: dict[str, Dataset]) -> str:
    return ", ".join(f"{len(d)} {n}" for n, d in splits.items())
