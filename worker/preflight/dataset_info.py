"""dataset_info.json: the datasets a job names, their files, how their columns map, and what ftq refuses.

The keys and defaults are LLaMA-Factory's (src/llamafactory/data/parser.py),
including one rule people trip over: an entry that gives `columns` gets None for
every column it does not name, and one that gives `tags` gets None for every tag
it does not name; the defaults (instruction / input / output, conversations, from /
value / human / gpt ...) apply only to an entry without `columns` (or `tags`). So
LLaMA-Factory's own pre-training entries, `columns: {prompt: text}` (c4_demo,
wiki_demo), have no response column at all.

Refused here, each naming the dataset and the column, so that a person hears of
it at submit rather than from a worker: hub-only entries (the worker has no
network), preference data (`ranking`, chosen / rejected / kto_tag), prompt-only
(pre-training) data, multimodal columns, unknown `formatting`, file types that
are not json, jsonl, csv, parquet or arrow (one type to a directory, as in
LLaMA-Factory), and a file whose first rows lack the column the mapping reads.

Pure (os, json; worker.preflight.data_peek): the server checks with it at submit, the worker again when it starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.preflight.confine import JSON_LIMIT, BadFile, CannotRead, Roots, check_file, files_of, read_json, show
from worker.preflight.data_peek import CannotPeek, long_first_line, peek

INFO_FILE = "dataset_info.json"
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# LLaMA-Factory's FILEEXT2TYPE (extras/constants.py).
FILE_TYPES = {"arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text"}
# LLaMA-Factory's DatasetAttr defaults, for an entry that gives no `columns` / `tags`.
COLUMNS = {
    "prompt": "instruction", "query": "input", "response": "output", "history": None, "messages": "conversations",
    "system": None, "tools": None, "images": None, "videos": None, "audios": None,
    "chosen": None, "rejected": None, "kto_tag": None,
}  # fmt: skip
TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}  # fmt: skip
MEDIA = ("images", "videos", "audios")
PREFERENCE = ("chosen", "rejected", "kto_tag")
FORMATTINGS = ("alpaca", "sharegpt")


class DataError(Exception):
    """A dataset problem a person can fix; the message says which dataset, file and line."""


@dataclass(frozen=True, eq=False)
class DatasetAttr:
    name: str
    path: Path  # file_name under dataset_dir: a file or a directory of files
    formatting: str
    columns: dict[str, str | None]
    tags: dict[str, str | None]
    files: list[Path] = field(default_factory=list)  # the files, in the order they are read
    file_type: str = "json"  # json (json and jsonl), csv, parquet or arrow
    entry: dict[str, Any] = field(default_factory=dict)  # as dataset_info.json gives it (a tokenized set records it)


def read_dataset_info(dataset_dir: str | os.PathLike[str], roots: Roots = None) -> tuple[dict[str, Any], Path]:
    """dataset_dir/dataset_info.json as a dict, read through the confined open; DataError says why not."""
    info_path = Path(dataset_dir) / INFO_FILE
    try:
        info = read_json(info_path, roots, JSON_LIMIT)
    except BadFile as exc:
        missing = isinstance(exc, CannotRead) and not os.path.lexists(info_path)
        raise DataError(f"{exc}; dataset_dir must hold a dataset_info.json" if missing else str(exc)) from None
    if not isinstance(info, dict):
        raise DataError(f"{info_path} must be a JSON object of dataset names")
    return info, info_path


def resolve_datasets(
    names: Sequence[str], dataset_dir: str | os.PathLike[str], roots: Roots = None, peek_files: bool = True
) -> list[DatasetAttr]:
    """Every name looked up in dataset_info.json and checked; one DataError listing every problem.

    `roots`: the daemon's input dirs; every file read must lie inside one (None: not confined).
    `peek_files`: also read the first rows of every file (worker.preflight.data_peek) for the columns the mapping reads.
    """
    info, info_path = read_dataset_info(dataset_dir, roots)
    problems: list[str] = []
    attrs: list[DatasetAttr] = []
    for name in _repeated(names):
        problems.append(f"dataset {name!r} is named twice; LLaMA-Factory would load it once, so name it once")
    for name in dict.fromkeys(names):
        if name not in info:
            known = ", ".join(sorted(info)) or "none"
            problems.append(f"dataset {name!r} is not in {info_path} (known: {known})")
            continue
        attr, found = check_entry(name, info[name], info_path, roots, peek_files)
        problems += found
        if attr is not None:
            attrs.append(attr)
    if problems:
        raise DataError("; ".join(problems))
    return attrs


def _repeated(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def check_entry(
    name: str, entry: Any, info_path: Path, roots: Roots, peek_files: bool = True
) -> tuple[DatasetAttr | None, list[str]]:
    """The entry of `name` as a DatasetAttr, and every reason ftq cannot train on it (each naming the dataset)."""
    if not isinstance(entry, dict):
        return None, [f"dataset {name!r} in {info_path} must be an object"]
    if "file_name" not in entry:
        hub = [key for key in HUB_KEYS if key in entry]
        if hub:
            return None, [
                f"dataset {name!r} is only on a hub ({hub[0]}={entry[hub[0]]!r}); this worker has no network: "
                f"download it into {info_path.parent} and give the entry a file_name"
            ]
        return None, [f"dataset {name!r} in {info_path} has no file_name"]
    problems: list[str] = []
    formatting = entry.get("formatting", "alpaca")
    if formatting == "openai":
        problems.append(
            f"dataset {name!r}: formatting 'openai' is not read by ftq yet; the OpenAI messages format is sharegpt "
            "with columns {messages: messages} and tags role / content / user / assistant / system"
        )
    elif formatting not in FORMATTINGS:
        problems.append(f"dataset {name!r}: formatting {formatting!r} is unknown (use alpaca or sharegpt)")
    columns, column_problems = _mapping(name, entry, "columns", COLUMNS)
    tags, tag_problems = _mapping(name, entry, "tags", TAGS)
    problems += column_problems + tag_problems
    problems += _refusals(name, entry, formatting, columns)
    path = info_path.parent / str(entry["file_name"])
    files, file_type, file_problems = _files(name, path, roots)
    problems += file_problems
    attr = DatasetAttr(name, path, formatting, columns, tags, files, file_type, entry)
    if peek_files and not problems:
        for file in files:
            problems += _peek_problems(attr, file, roots)
    return (None if problems else attr), problems


def _mapping(
    name: str, entry: dict[str, Any], key: str, defaults: dict[str, str | None]
) -> tuple[dict[str, str | None], list[str]]:
    given = entry.get(key)
    if given is None:
        return dict(defaults), []
    if not isinstance(given, dict) or not all(v is None or isinstance(v, str) for v in given.values()):
        return dict(defaults), [f"dataset {name!r}: {key} must be an object of names (strings)"]
    return {k: given.get(k) for k in defaults}, []  # LLaMA-Factory: what `columns` does not name is None


def _refusals(name: str, entry: dict[str, Any], formatting: str, columns: dict[str, str | None]) -> list[str]:
    problems = []
    preference = [f"column {key} ({columns[key]!r})" for key in PREFERENCE if columns[key]]
    if entry.get("ranking") or preference:
        why = ", ".join((["ranking: true"] if entry.get("ranking") else []) + preference)
        problems.append(
            f"dataset {name!r} is preference data ({why}) for LLaMA-Factory's rm / dpo / kto stages; "
            "ftq trains sft only, on prompts and responses"
        )
    media = [f"{key} ({columns[key]!r})" for key in MEDIA if columns[key]]
    if media:
        problems.append(f"dataset {name!r} maps multimodal columns ({', '.join(media)}); ftq trains on text only")
    if formatting == "alpaca" and not columns["response"]:
        prompt = f" ({columns['prompt']!r})" if columns["prompt"] else ""
        problems.append(
            f"dataset {name!r} maps a prompt column{prompt} and no response column: that is pre-training text "
            "(LLaMA-Factory's stage pt, like its c4_demo entry); ftq trains sft, which needs columns.response"
        )
    if formatting == "sharegpt" and not columns["messages"]:
        problems.append(f"dataset {name!r} is sharegpt but its columns name no messages column")
    if entry.get("num_samples") is not None:
        problems.append(f"dataset {name!r}: num_samples is not read by ftq yet; use max_samples (the first n rows)")
    return problems


def _files(name: str, path: Path, roots: Roots) -> tuple[list[Path], str, list[str]]:
    """The dataset's files (a file, or every file of a directory), all of one known type."""
    try:
        files = [Path(file) for file in files_of(path, roots)]
    except BadFile as exc:
        return [], "json", [f"dataset {name!r}: {exc}"]
    if not files:
        return [], "json", [f"dataset {name!r}: the directory {show(path)} holds no files"]
    types = {file: FILE_TYPES.get(file.suffix[1:].lower()) for file in files}
    unknown = [file for file, kind in types.items() if kind is None]
    kinds = list(dict.fromkeys(kind for kind in types.values() if kind is not None))
    if unknown:
        why = f"{show(unknown[0])} is not a file type LLaMA-Factory reads (json, jsonl, csv, parquet, arrow)"
    elif len(kinds) > 1:
        why = f"{show(path)} holds {' and '.join(kinds)} files; a dataset directory holds files of one type"
    elif kinds[0] == "text":
        why = (
            f"{show(files[0])} is plain text, which LLaMA-Factory reads as pre-training text (stage pt); "
            "ftq trains sft on prompts and responses"
        )
    else:
        return files, kinds[0], []
    return files, kinds[0] if kinds else "json", [f"dataset {name!r}: {why}"]


def _peek_problems(attr: DatasetAttr, file: Path, roots: Roots) -> list[str]:
    """The mapped columns this file lacks and the multimodal ones it has, judged from its first rows."""
    try:
        seen = peek(file, attr.file_type, roots)
    except (BadFile, CannotPeek) as exc:
        return [f"dataset {attr.name!r}: {exc}"]
    if seen.columns is None:  # no whole row within the peek: a first line too long to be an example is refused
        try:  # here; anything else, the worker's full read decides
            long = long_first_line(file, roots) if attr.file_type == "json" else None
        except (BadFile, CannotPeek) as exc:
            return [f"dataset {attr.name!r}: {exc}"]
        return [f"dataset {attr.name!r}: {long}"] if long else []
    col = attr.columns
    needed = ["prompt", "response"] if attr.formatting == "alpaca" else ["messages"]
    has = ", ".join(seen.columns) or "none"
    problems = [
        f"dataset {attr.name!r}: {show(file)} has no column {col[key]!r} (the {key} column; it has: {has})"
        for key in needed
        if col[key] and col[key] not in seen.columns
    ]
    if seen.rows:  # json: a media column counts when a row fills it
        media = [key for key in MEDIA if any(row.get(key) not in (None, "", []) for row in seen.rows)]
    else:
        media = [key for key in MEDIA if key in seen.columns]
    if media:
        problems.append(
            f"dataset {attr.name!r}: {show(file)} has multimodal columns ({', '.join(media)}); ftq trains on text only"
        )
    return problems


def file_stats(attr: DatasetAttr, roots: Roots) -> list[dict[str, Any]]:
    """Each file's real path, size and mtime: what a saved tokenized set records it was made from."""
    stats = []
    for file in attr.files:
        try:
            st = check_file(file, roots)
        except BadFile as exc:
            raise DataError(f"dataset {attr.name!r}: {exc}") from None
        stats.append({"path": os.path.realpath(file), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return stats
