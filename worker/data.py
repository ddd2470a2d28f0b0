"""Training data the way LLaMA-Factory users already describe it.

`dataset_dir/dataset_info.json` names each dataset, its file, its `formatting`
(alpaca or sharegpt) and its `columns` / `tags`; we read the same keys with the
same defaults, turn every example into chat messages, and render them with the
tokenizer's own chat template so that only assistant turns are trained on.
Every file is read through worker.confine when it is read, so a dataset_info.json
rewritten after submit cannot point the worker outside the daemon's input dirs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from worker.confine import JSON_LIMIT, BadFile, CannotRead, Roots, files_of, read_json, read_text

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
INFO_FILE = "dataset_info.json"
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")

# LLaMA-Factory's defaults (src/llamafactory/data/parser.py).
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": None, "history": None}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": None, "tools": None}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


class DataError(Exception):
    """A dataset problem a person can fix; the message says which dataset, file and line."""


@dataclass(frozen=True)
class DatasetAttr:
    name: str
    path: Path
    formatting: str
    columns: dict[str, Any]
    tags: dict[str, str]


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    tools: list[Any] | None = None


def resolve_datasets(names: Sequence[str], dataset_dir: str | Path, roots: Roots = None) -> list[DatasetAttr]:
    """Look every name up in dataset_info.json; raise one DataError listing every problem.

    `roots`: the daemon's input dirs; every file read must lie inside one (None: not confined).
    """
    info_path = Path(dataset_dir) / INFO_FILE
    try:
        info = read_json(info_path, roots, JSON_LIMIT)
    except BadFile as exc:
        missing = isinstance(exc, CannotRead) and not os.path.lexists(info_path)
        raise DataError(f"{exc}; dataset_dir must hold a dataset_info.json" if missing else str(exc)) from None
    if not isinstance(info, dict):
        raise DataError(f"{info_path} must be a JSON object of dataset names")
    problems, attrs = [], []
    for name in names:
        try:
            attrs.append(_dataset_attr(name, info, info_path, roots))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("; ".join(problems))
    return attrs


def _dataset_attr(name: str, info: dict[str, Any], info_path: Path, roots: Roots) -> DatasetAttr:
    if name not in info:
        known = ", ".join(sorted(info)) or "none"
        raise DataError(f"dataset {name!r} is not in {info_path} (known: {known})")
    entry = info[name]
    if not isinstance(entry, dict):
        raise DataError(f"dataset {name!r} in {info_path} must be an object")
    if "file_name" not in entry:
        hub = [key for key in HUB_KEYS if key in entry]
        if hub:
            raise DataError(
                f"dataset {name!r} is only on a hub ({hub[0]}={entry[hub[0]]!r}); this worker has no network: "
                f"download it into {info_path.parent} and give the entry a file_name"
            )
        raise DataError(f"dataset {name!r} in {info_path} has no file_name")
    path = info_path.parent / str(entry["file_name"])
    dataset_files(name, path, roots)  # every file there inside the input dirs, and a regular file
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(f"dataset {name!r}: formatting {formatting!r} is unknown (use alpaca or sharegpt)")
    if entry.get("ranking"):
        raise DataError(f"dataset {name!r} is a ranking (preference) dataset; ftq trains sft only")
    defaults = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    columns = {**defaults, **(entry.get("columns") or {})}
    tags = {**SHAREGPT_TAGS, **(entry.get("tags") or {})}
    return DatasetAttr(name, path, formatting, columns, tags)


def dataset_files(name: str, path: Path, roots: Roots) -> list[Path]:
    """The files a dataset entry names (a file, or every file of a directory); DataError names a bad one."""
    try:
        return [Path(file) for file in files_of(path, roots)]
    except BadFile as exc:
        raise DataError(f"dataset {name!r}: {exc}") from None


def read_rows(attr: DatasetAttr, roots: Roots = None) -> list[Any]:
    """Rows of a json / jsonl file, or of every such file in a directory (as LLaMA-Factory allows)."""
    rows: list[Any] = []
    for path in dataset_files(attr.name, attr.path, roots):
        if path.suffix.lower() not in (".json", ".jsonl"):
            kind = path.suffix[1:] or "a file without extension"
            raise DataError(f"dataset {attr.name!r}: {path} is {kind}; only json and jsonl are supported yet")
        rows.extend(_read_json_rows(attr.name, path, roots))
    return rows


def _read_json_rows(name: str, path: Path, roots: Roots) -> list[Any]:
    try:
        text = read_text(path, roots)  # checked again here: the file may have changed since it was listed
    except BadFile as exc:
        raise DataError(f"dataset {name!r}: {exc}") from None
    # Like the `datasets` json loader: a JSON array, or one object per line.
    if text.lstrip().startswith("["):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError as exc:
            raise _bad_json(name, path, exc.lineno, exc) from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise _bad_json(name, path, lineno, exc) from None
    return rows


def _bad_json(name: str, path: Path, lineno: int, exc: json.JSONDecodeError) -> DataError:
    return DataError(f"dataset {name!r}: {path} line {lineno} column {exc.colno}: invalid JSON ({exc.msg})")


def convert_alpaca(row: Any, attr: DatasetAttr) -> Conversation:
    """instruction (+ "\\n" + input) as the last user turn, output as the answer; history pairs before it."""
    col = attr.columns
    _require(isinstance(row, dict), "not a JSON object")
    messages: list[dict[str, str]] = []
    system = row.get(col["system"]) if col["system"] else None
    if system:
        _require(isinstance(system, str), f"column {col['system']!r} is not a string")
        messages.append({"role": "system", "content": system})
    history = row.get(col["history"]) if col["history"] else None
    if history:
        _require(isinstance(history, list), f"column {col['history']!r} is not a list of [prompt, response] pairs")
        for pair in history:
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
            _require(ok, f"column {col['history']!r} holds something other than [prompt, response] pairs")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    parts = [row.get(col[key]) for key in ("prompt", "query") if col[key] and row.get(col[key])]
    _require(all(isinstance(p, str) for p in parts), "instruction / input is not a string")
    _require(bool(parts), f"column {col['prompt']!r} is empty")
    response = row.get(col["response"])
    _require(isinstance(response, str) and response != "", f"column {col['response']!r} is missing or empty")
    messages += [{"role": "user", "content": "\n".join(parts)}, {"role": "assistant", "content": response}]
    return Conversation(messages)


def convert_sharegpt(row: Any, attr: DatasetAttr) -> Conversation:
    """Map role tags to chat roles; user/observation at odd turns, assistant/function at even ones."""
    col, tag = attr.columns, attr.tags
    _require(isinstance(row, dict), "not a JSON object")
    turns = row.get(col["messages"])
    _require(isinstance(turns, list) and bool(turns), f"column {col['messages']!r} is missing or not a list")
    _require(all(isinstance(t, dict) for t in turns), f"column {col['messages']!r} holds a non-object turn")
    role_of = {
        tag["user_tag"]: "user",
        tag["observation_tag"]: "tool",  # what chat templates call a tool result
        tag["assistant_tag"]: "assistant",
        tag["function_tag"]: "assistant",  # a tool call is the assistant speaking, and trained on
    }
    odd, even = (tag["user_tag"], tag["observation_tag"]), (tag["assistant_tag"], tag["function_tag"])
    messages: list[dict[str, str]] = []
    if turns[0].get(tag["role_tag"]) == tag["system_tag"]:
        system, turns = turns[0].get(tag["content_tag"]), turns[1:]
    else:
        system = row.get(col["system"]) if col["system"] else None
    if system:
        _require(isinstance(system, str), "the system prompt is not a string")
        messages.append({"role": "system", "content": system})
    _require(bool(turns), "the conversation has no turn besides the system prompt")
    for i, turn in enumerate(turns):
        role, content = turn.get(tag["role_tag"]), turn.get(tag["content_tag"])
        expected = odd if i % 2 == 0 else even
        _require(role in expected, f"turn {i + 1} has role {role!r}, expected one of {list(expected)}")
        _require(isinstance(content, str), f"turn {i + 1} has no string {tag['content_tag']!r}")
        messages.append({"role": role_of[role], "content": content})
    _require(len(turns) % 2 == 0, "the conversation does not end with an assistant turn")
    tools = row.get(col["tools"]) if col["tools"] else None
    if isinstance(tools, str) and tools:
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            _require(False, f"column {col['tools']!r} is not valid JSON")
    return Conversation(messages, tools or None)


class _Malformed(Exception):
    pass


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise _Malformed(why)


def load_conversations(
    names: Sequence[str], dataset_dir: str | Path, max_samples: int | None, roots: Roots = None
) -> list[Conversation]:
    """Every dataset converted and concatenated; malformed examples are skipped and counted."""
    conversations: list[Conversation] = []
    for attr in resolve_datasets(names, dataset_dir, roots):
        rows = read_rows(attr, roots)[:max_samples]
        converted = convert_rows(rows, attr)
        if len(converted) < len(rows):
            skipped = len(rows) - len(converted)
            log.warning("dataset %r: skipped %d malformed examples of %d", attr.name, skipped, len(rows))
        if not converted:
            raise DataError(f"dataset {attr.name!r}: no usable example in {attr.path} ({len(rows)} rows)")
        log.info("dataset %r: %d examples from %s", attr.name, len(converted), attr.path)
        conversations += converted
    return conversations


def convert_rows(rows: Sequence[Any], attr: DatasetAttr) -> list[Conversation]:
    convert = convert_alpaca if attr.formatting == "alpaca" else convert_sharegpt
    converted, skipped = [], 0
    for index, row in enumerate(rows):
        try:
            converted.append(convert(row, attr))
        except _Malformed as why:
            skipped += 1
            if skipped <= 3:  # enough to see the pattern without flooding the log
                log.warning("dataset %r: example %d skipped: %s", attr.name, index, why)
    return converted


def tokenize_conversation(tokenizer: Any, conv: Conversation, cutoff_len: int) -> dict[str, list[int]] | None:
    """Token ids with labels on assistant turns only; None when truncation leaves nothing to learn."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat_template; ftq renders conversations with the model's own template")

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(
            messages, tools=conv.tools, tokenize=False, add_generation_prompt=generation
        )

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    input_ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text already tokenized
    msgs = conv.messages
    # Render growing prefixes: what comes before assistant turn k is prompt, turn k itself is labelled.
    for k, message in enumerate(msgs):
        if message["role"] != "assistant":
            continue
        prompt, answered = render(msgs[:k], generation=True), render(msgs[: k + 1])
        if not prompt.startswith(done) or not answered.startswith(prompt):
            raise DataError(
                "the chat template does not render a conversation as a growing prefix "
                "(it rewrites earlier turns), so assistant turns cannot be located"
            )
        prompt_ids, answer_ids = encode(prompt[len(done) :]), encode(answered[len(prompt) :])
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        done = answered
    input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


class ListDataset(Dataset):
    """Tokenized examples in memory: the demo datasets are small and this keeps `datasets` out."""

    def __init__(self, examples: list[dict[str, list[int]]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


@dataclass
class PadCollator:
    """Right-pads a batch: pad id for input_ids, 0 for attention_mask, -100 for labels."""

    pad_token_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in batch)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {
            key: torch.tensor([ex[key] + [pad] * (width - len(ex[key])) for ex in batch], dtype=torch.long)
            for key, pad in pads.items()
        }


def split_examples(examples: list[Any], val_size: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Hold out val_size (a fraction, rounded up like `datasets`, or a count) at random, seeded."""
    if val_size <= 0:
        return examples, []
    n_eval = int(val_size) if val_size >= 1 else math.ceil(val_size * len(examples))
    if n_eval >= len(examples):
        raise DataError(f"val_size {val_size:g} holds out {n_eval} of {len(examples)} examples, leaving none to train")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held_out]
    return train, [examples[i] for i in sorted(held_out)]


def build_datasets(
    spec: Any, tokenizer: Any, roots: Roots = None
) -> tuple[ListDataset, ListDataset | None, PadCollator]:
    """From spec to (train, eval or None, collator); raises DataError with what to fix."""
    conversations = load_conversations(spec.dataset_names, spec.dataset_dir, spec.max_samples, roots)
    tokenized = [tokenize_conversation(tokenizer, conv, spec.cutoff_len) for conv in conversations]
    examples = [ex for ex in tokenized if ex is not None]
    if len(examples) < len(tokenized):
        log.warning(
            "dropped %d examples with no assistant token within cutoff_len %d",
            len(tokenized) - len(examples),
            spec.cutoff_len,
        )
    if not examples:
        raise DataError(f"no example keeps an assistant token within cutoff_len {spec.cutoff_len}; raise cutoff_len")
    train, held_out = split_examples(examples, spec.val_size, spec.seed)
    log.info("data: %d train, %d eval examples", len(train), len(held_out))
    return ListDataset(train), (ListDataset(held_out) if held_out else None), PadCollator(tokenizer.pad_token_id)
