"""Training data the way LLaMA-Factory users already describe it, from spec to (train, eval, collator).

The steps are LLaMA-Factory's (src/llamafactory/data/loader.py), each in a module of its own:
worker.preflight.dataset_info looks the names up in dataset_info.json and checks them;
worker.data.files reads each dataset's files through worker.preflight.confine (the first
max_samples rows); worker.data.convert makes conversations of the rows; worker.data.mixing
merges the datasets (mix_strategy); worker.data.encode is the one step from a
conversation to token ids, run over the set with datasets.map
(preprocessing_num_workers processes, preprocessing_batch_size rows a batch);
worker.data.mixing holds out val_size; eval_dataset is read, merged and encoded the
same way. worker.data.tokenized saves the result at tokenized_path and reuses it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, Features, List, Value

from worker.data import tokenized
from worker.data.batching import FlatCollator, PadCollator, make_collator
from worker.data.convert import Conversation, convert_rows
from worker.data.encode import Encoder, make_encoder
from worker.data.files import read_rows
from worker.data.mixing import merge_datasets, split_dataset, split_examples
from worker.data.packing import PackRows
from worker.data.supervised import IGNORE_INDEX
from worker.preflight.confine import BadFile, Roots, read_json_object
from worker.preflight.data_checks import output_location, parse_interleave_probs
from worker.preflight.dataset_info import DataError, DatasetAttr, resolve_datasets
from worker.templates.render import MalformedMessages
from worker.templates.tools import MalformedToolJson

log = logging.getLogger(__name__)

CONVERSATION_FEATURES = Features(
    {
        "_messages": List({"role": Value("string"), "content": Value("string")}),
        "_system": Value("string"),
        "_tools": Value("string"),
    }
)
TOKEN_FEATURES = Features({key: List(Value("int32")) for key in ("input_ids", "attention_mask", "labels")})
PACKED_FEATURES = Features({key: List(Value("int32")) for key in ("input_ids", "labels", "position_ids")})


def build_datasets(
    spec: Any, tokenizer: Any, roots: Roots = None, output_roots: Roots = None
) -> tuple[Dataset, Dataset | None, PadCollator | FlatCollator]:
    """From spec to (train, eval or None, collator); raises DataError with what to fix.

    `roots`: the input dirs every dataset file is read from; `output_roots`: the output dirs tokenized_path lies in
    (both None: a worker run by hand, not confined).
    """
    datasets.disable_progress_bars()  # the worker's log is a file: a bar per map would fill it with \r lines
    attrs = resolve_datasets(spec.dataset_names, spec.dataset_dir, roots, peek_files=False)
    eval_names = list(getattr(spec, "eval_dataset_names", None) or [])
    eval_attrs = resolve_datasets(eval_names, spec.dataset_dir, roots, peek_files=False) if eval_names else []
    model_dir = getattr(spec, "model_name_or_path", None)
    encode = make_encoder(spec, tokenizer, model_vocab_size(model_dir, roots) if model_dir else None)
    collator = make_collator(spec, tokenizer.pad_token_id)
    if getattr(spec, "tokenized_path", None) is None:
        return (*prepare(spec, attrs, eval_attrs, encode, roots), collator)
    path = output_location(spec.tokenized_path, output_roots)
    made_from = tokenized.recipe(spec, attrs, eval_attrs, tokenizer, roots)
    with tokenized.locked(path, output_roots):
        saved = tokenized.load(path, made_from, output_roots)
        if saved is not None:
            return (*saved, collator)
        train, held_out = prepare(spec, attrs, eval_attrs, encode, roots)
        tokenized.save(path, made_from, train, held_out, output_roots)
    return train, held_out, collator


def prepare(
    spec: Any, attrs: list[DatasetAttr], eval_attrs: list[DatasetAttr], encode: Encoder, roots: Roots
) -> tuple[Dataset, Dataset | None]:
    """Read, convert, merge and encode the datasets, then hold out val_size (or encode eval_dataset)."""
    probs = parse_interleave_probs(getattr(spec, "interleave_probs", None))
    strategy, seed = getattr(spec, "mix_strategy", "concat"), spec.seed
    max_samples = spec.max_samples
    train = merge_datasets([load_dataset(a, max_samples, roots) for a in attrs], strategy, probs, seed)
    train = encode_dataset(train, encode, spec, "train")
    train, held_out = split_dataset(train, spec.val_size, seed)
    if eval_attrs:
        merged = merge_datasets([load_dataset(a, max_samples, roots) for a in eval_attrs], strategy, probs, seed)
        held_out = encode_dataset(merged, encode, spec, "eval")
    log.info("data: %d train, %d eval examples", len(train), len(held_out) if held_out is not None else 0)
    return train, held_out


def load_dataset(attr: DatasetAttr, max_samples: int | None, roots: Roots) -> Dataset:
    """One dataset's first max_samples rows as conversations (columns _messages, _system, _tools)."""
    conversations = _conversations(attr, max_samples, roots)
    columns = {
        "_messages": [c.messages for c in conversations],
        "_system": [c.system for c in conversations],
        "_tools": [c.tools for c in conversations],
    }
    return Dataset.from_dict(columns, features=CONVERSATION_FEATURES)


def encode_dataset(dataset: Dataset, encode: Encoder, spec: Any, what: str) -> Dataset:
    """Every conversation through the encoder (in preprocessing_num_workers processes); those that keep no
    label within cutoff_len are dropped and counted."""
    encoded = dataset.map(
        _EncodeBatch(encode),
        batched=True,
        batch_size=getattr(spec, "preprocessing_batch_size", 1000),
        num_proc=getattr(spec, "preprocessing_num_workers", None),
        remove_columns=dataset.column_names,
        features=TOKEN_FEATURES,
        # In memory, nothing is cached, so no fingerprint is needed: a fresh one spares hashing the tokenizer.
        new_fingerprint=uuid.uuid4().hex,
    )
    dropped = len(dataset) - len(encoded)
    if dropped:
        log.warning("%s: dropped %d examples with no label within cutoff_len %d", what, dropped, spec.cutoff_len)
    if not len(encoded):
        raise DataError(f"{what}: no example keeps an assistant token within cutoff_len {spec.cutoff_len}; raise it")
    if getattr(spec, "packing", None) or getattr(spec, "neat_packing", False):
        examples = len(encoded)
        encoded = encoded.map(
            PackRows(spec.cutoff_len),
            batched=True,
            batch_size=getattr(spec, "preprocessing_batch_size", 1000),
            remove_columns=encoded.column_names,
            features=PACKED_FEATURES,
            new_fingerprint=uuid.uuid4().hex,
        )
        rows, width = len(encoded), spec.cutoff_len
        log.info("%s: %d examples packed into %d rows of at most %d tokens", what, examples, rows, width)
    return encoded


def model_vocab_size(model_dir: str, roots: Roots) -> int | None:
    """The rows of the model's embedding, from its config.json (None where it does not say)."""
    try:
        config = read_json_object(Path(model_dir) / "config.json", roots)
    except BadFile:
        return None
    size = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return size if isinstance(size, int) and size > 0 else None


@dataclass
class _EncodeBatch:
    """A batch of conversations to the rows of token ids of those that keep a label (picklable for num_proc)."""

    encode: Encoder

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {key: [] for key in TOKEN_FEATURES}
        for messages, system, tools in zip(batch["_messages"], batch["_system"], batch["_tools"], strict=True):
            try:
                example = self.encode(Conversation(messages, system, tools))
            except (MalformedMessages, MalformedToolJson) as why:  # one example's own problem: skipped, counted
                log.warning("an example was skipped: %s", why)
                example = None
            if example is not None:
                for key in out:
                    out[key].append(example[key])
        return out


def load_conversations(
    names: Sequence[str], dataset_dir: str | Path, max_samples: int | None, roots: Roots = None
) -> list[Conversation]:
    """Every dataset's conversations, concatenated (what the datasets hold before encoding)."""
    attrs = resolve_datasets(names, dataset_dir, roots, peek_files=False)
    return [conv for attr in attrs for conv in _conversations(attr, max_samples, roots)]


def _conversations(attr: DatasetAttr, max_samples: int | None, roots: Roots) -> list[Conversation]:
    rows = read_rows(attr, roots, max_samples)
    conversations = convert_rows(rows, attr)
    if not conversations:
        raise DataError(f"dataset {attr.name!r}: no usable example in {attr.path} ({len(rows)} rows)")
    log.info("dataset %r: %d examples from %s", attr.name, len(conversations), attr.path)
    return conversations


__all__ = [
    "IGNORE_INDEX",
    "Conversation",
    "DataError",
    "FlatCollator",
    "PadCollator",
    "build_datasets",
    "load_conversations",
    "resolve_datasets",
    "split_examples",
]
