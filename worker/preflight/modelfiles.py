"""A model directory checked file by file, before transformers opens any of it.

transformers opens a model's files by path itself, so they cannot go through
worker.preflight.confine's descriptor check. Instead every file under the directory is
checked right before each load: a regular file (a FIFO would hang the load, a
device could be anything), whose real path lies inside an input dir, and every
`*.safetensors` whose header agrees with the file's size, so that a truncated
shard is named instead of failing deep inside the loader.

What remains is the window between this walk and transformers' own open of each
file: a file swapped for a symlink in that moment is read. Closing it would mean
copying the model (tens of GB) or loading it from descriptors, which transformers
does not offer; the walk runs immediately before each from_pretrained to keep the
window to the load itself.

Pure (os, json, struct): the server runs the same checks at submit.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

from worker.preflight.confine import (
    JSON_LIMIT,
    BadFile,
    FileTooLarge,
    Roots,
    decode_utf8,
    explain_os_error,
    not_regular,
    outside_message,
    parse_json,
    read_bytes,
    read_range,
    read_text,
    show,
    within,
)

MAX_FILES = 10_000  # a model directory with more is not a model directory; stop walking rather than stall
MAX_DEPTH = 8
SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors library's own limit on the JSON header
# Every top-level *.json of a model is parsed in the worker (config, tokenizer, generation config, shard index):
# tokenizer.json of a large vocabulary is tens of MiB, so the limit is larger than JSON_LIMIT.
MODEL_JSON_LIMIT = 256 << 20
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


def model_files(model_dir: str | os.PathLike[str], roots: Roots) -> tuple[list[str], list[str]]:
    """(every regular file under the directory, every problem with its entries), symlinks followed.

    A symlinked directory is walked once, at its real path; an entry that leads outside the roots or is
    not a regular file or directory is a problem, named by the path it has inside the model directory.
    """
    files: list[str] = []
    problems: list[str] = []
    seen: set[str] = set()

    def walk(directory: str, depth: int) -> None:
        real = os.path.realpath(directory)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            problems.append(explain_os_error(directory, exc, "directory"))
            return
        for entry in entries:
            if len(files) > MAX_FILES:
                return
            path = entry.path
            try:
                target = os.path.realpath(path, strict=True)
                mode = os.stat(target).st_mode
            except (OSError, ValueError) as exc:
                problems.append(explain_os_error(path, exc))
                continue
            if roots is not None and not within(target, roots):
                problems.append(outside_message(path, roots))
            elif stat.S_ISDIR(mode):
                if depth >= MAX_DEPTH:
                    problems.append(f"{show(path)} is nested more than {MAX_DEPTH} directories deep")
                else:
                    walk(path, depth + 1)
            elif stat.S_ISREG(mode):
                files.append(path)
            else:
                problems.append(str(not_regular(path, mode)))

    walk(os.fspath(model_dir), 0)
    if len(files) > MAX_FILES:
        problems.append(f"{show(model_dir)} holds more than {MAX_FILES} files; it is not a model directory")
    return files, problems


def check_safetensors(path: str | os.PathLike[str], roots: Roots) -> None:
    """BadFile unless the header (8-byte little-endian length, then JSON) fits the file and its tensors end at its end.

    The safetensors library refuses a file whose data does not end exactly where the header's offsets say,
    so the check is as exact as the loader and reads only the header.
    """
    head = read_range(path, roots, 0, 8)  # refuses what is not a regular file inside the roots
    try:
        size = os.stat(path).st_size
    except (OSError, ValueError) as exc:
        raise BadFile(path, explain_os_error(path, exc)) from None
    truncated = f"{show(path)} is truncated or corrupt"
    if len(head) < 8:
        raise BadFile(path, f"{truncated}: {size} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > SAFETENSORS_HEADER_LIMIT:
        raise BadFile(path, f"{truncated}: its header claims {header_len} bytes (safetensors allows 100 MiB)")
    if 8 + header_len > size:
        raise BadFile(path, f"{truncated}: its header claims {header_len} bytes but the file has {size}")
    raw = read_range(path, roots, 8, header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadFile(path, f"{truncated}: its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BadFile(path, f"{truncated}: its header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        ok = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
        if not ok or not 0 <= offsets[0] <= offsets[1]:
            raise BadFile(path, f"{truncated}: tensor {name!r} has no valid data_offsets in its header")
        end = max(end, offsets[1])
    expected = 8 + header_len + end
    if expected != size:
        says = "truncated" if expected > size else "longer than its header says"
        raise BadFile(
            path,
            f"{show(path)} is {says}: its header puts the end of the tensor data at byte {expected} "
            f"and the file has {size} bytes; copy the weights again",
        )


def check_model_files(model_dir: str | os.PathLike[str], roots: Roots, parse: bool = False) -> list[str]:
    """Every problem with the files of a model directory: confinement, kind, safetensors headers, and with
    `parse` the JSON of each top-level *.json (config, tokenizer, generation config, shard index)."""
    files, problems = model_files(model_dir, roots)
    top = os.path.realpath(model_dir)
    for path in files:
        name = os.path.basename(path)
        try:
            if name.endswith(".safetensors"):
                check_safetensors(path, roots)
            elif parse and name.endswith(".json") and os.path.realpath(os.path.dirname(path)) == top:
                parse_json_file(path, roots, MODEL_JSON_LIMIT)
        except FileTooLarge:
            pass  # too large to parse here is not wrong in itself; transformers reads it, or says why not
        except BadFile as exc:
            problems.append(str(exc))
    return problems


def parse_json_file(path: str | os.PathLike[str], roots: Roots, limit: int = JSON_LIMIT) -> Any:
    """The JSON of a file inside the roots (UTF-8 checked, with line and column on failure)."""
    return parse_json(decode_utf8(read_bytes(path, roots, limit), path), path)


def bad_file_behind(model_dir: str | os.PathLike[str], roots: Roots, first: tuple[str, ...] = ()) -> BadFile | None:
    """After a load failed: the first file of the directory that explains it (bad JSON or text, a truncated shard).

    The files in `first` (those the failed loader reads) are checked before every other *.json and *.safetensors.
    """
    directory = Path(model_dir)
    candidates = [directory / name for name in first]
    candidates += sorted(directory.glob("*.json")) + sorted(directory.glob("*.safetensors"))
    for path in dict.fromkeys(candidates):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                check_safetensors(path, roots)
            elif path.suffix == ".json":
                parse_json_file(path, roots, MODEL_JSON_LIMIT)
            elif path.suffix in (".jinja", ".txt"):
                read_text(path, roots, MODEL_JSON_LIMIT)
        except BadFile as exc:
            return exc
    return None
