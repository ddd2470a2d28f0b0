"""worker.data.pipeline end to end:
mix_strategy with interleave_probs, max_samples, eval_dataset, preprocessing workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from tests.unit.data_helpers import OPENAI_ENTRY, make_tokenizer, qa, write_dataset
from worker.data.pipeline import build_datasets
from worker.spec.job import JobSpec


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Three datasets of 10, 4 and 2 examples; each user turn says which dataset and row it is."""
    info = {name: {**OPENAI_ENTRY, "file_name": f"{name}.jsonl"} for name in ("big", "small", "tiny")}
    rows = {"big.jsonl": [qa(i, "big") for i in range(10)], "small.jsonl": [qa(i, "small") for i in range(4)],
            "tiny.jsonl": [qa(i, "tiny") for i in range(2)]}  # fmt: skip
    return write_dataset(tmp_path / "data", info, rows)


def spec(data: Path, **fields: Any) -> JobSpec:
    return JobSpec(**{"model_name_or_path": "unused", "dataset_dir": str(data), "cutoff_len": 64, **fields})


def sources(dataset: Any, tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """Which dataset and row each example came from, read back from its tokens."""
    texts = [tokenizer.decode(ids) for ids in dataset["input_ids"]]
    return [text.split("user\n")[1].split("<|im_end|>")[0] for text in texts]


def test_concat_keeps_each_dataset_in_order_and_max_samples_caps_each(data: Path, tokenizer) -> None:
    train, held_out, _ = build_datasets(spec(data, dataset="small,tiny", max_samples=3), tokenizer)
    assert sources(train, tokenizer) == ["small0", "small1", "small2", "tiny0", "tiny1"]
    assert held_out is None


def test_interleave_under_stops_when_the_first_dataset_runs_out_and_is_seeded(data: Path, tokenizer) -> None:
    mixed = spec(data, dataset="big,tiny", mix_strategy="interleave_under", interleave_probs="0.5,0.5", seed=3)
    first = sources(build_datasets(mixed, tokenizer)[0], tokenizer)
    assert first == sources(build_datasets(mixed, tokenizer)[0], tokenizer)  # the same seed, the same mix
    assert [s for s in first if s.startswith("tiny")] == ["tiny0", "tiny1"]  # tiny ran out: the mix stopped
    assert first[-1] == "tiny1"
    assert [s for s in first if s.startswith("big")] == [f"big{i}" for i in range(len(first) - 2)]
    other = spec(data, dataset="big,tiny", mix_strategy="interleave_under", interleave_probs="0.5,0.5", seed=4)
    assert sources(build_datasets(other, tokenizer)[0], tokenizer) != first  # another seed, another mix


def test_interleave_over_runs_until_every_dataset_was_seen_whole(data: Path, tokenizer) -> None:
    mixed = spec(data, dataset="big,small", mix_strategy="interleave_over", interleave_probs="0.8,0.2", seed=0)
    seen = sources(build_datasets(mixed, tokenizer)[0], tokenizer)
    assert seen == sources(build_datasets(mixed, tokenizer)[0], tokenizer)
    assert {f"big{i}" for i in range(10)} | {f"small{i}" for i in range(4)} <= set(seen)
    assert seen[-1] == "big9" and seen.count("small0") == 2  # the small one oversampled until big was seen whole


def test_interleave_without_probs_alternates(data: Path, tokenizer) -> None:
    mixed = spec(data, dataset="small,tiny", mix_strategy="interleave_under")
    assert sources(build_datasets(mixed, tokenizer)[0], tokenizer) == ["small0", "tiny0", "small1", "tiny1"]


def test_eval_dataset_is_read_and_encoded_the_same_way_and_max_samples_caps_it(data: Path, tokenizer) -> None:
    train, held_out, _ = build_datasets(spec(data, dataset="big", eval_dataset="small,tiny", max_samples=3), tokenizer)
    assert sources(train, tokenizer) == ["big0", "big1", "big2"]
    assert held_out is not None and sources(held_out, tokenizer) == ["small0", "small1", "small2", "tiny0", "tiny1"]
    assert set(held_out.column_names) == {"input_ids", "attention_mask", "labels"}


def test_val_size_holds_out_of_the_merged_set(data: Path, tokenizer) -> None:
    train, held_out, _ = build_datasets(spec(data, dataset="big,small", val_size=0.25), tokenizer)
    assert (len(train), len(held_out)) == (10, 4)
    assert sorted(sources(train, tokenizer) + sources(held_out, tokenizer)) == sorted(
        [f"big{i}" for i in range(10)] + [f"small{i}" for i in range(4)]
    )


def test_several_preprocessing_workers_and_small_batches_give_the_same_ids(data: Path, tokenizer) -> None:
    one = build_datasets(spec(data, dataset="big,small"), tokenizer)[0]
    many = build_datasets(
        spec(data, dataset="big,small", preprocessing_num_workers=2, preprocessing_batch_size=3), tokenizer
    )[0]
    assert many["input_ids"] == one["input_ids"] and many["labels"] == one["labels"]


def test_a_short_cutoff_len_truncates_each_turn_as_llamafactory_does(data: Path, tokenizer) -> None:
    # LLaMA-Factory's infer_seqlen gives the answer its share of cutoff_len, so every example keeps a label.
    train, _, _ = build_datasets(spec(data, dataset="tiny", cutoff_len=8), tokenizer)
    assert len(train) and all(len(row["input_ids"]) <= 8 for row in train)
    assert all(any(label != -100 for label in row["labels"]) for row in train)
