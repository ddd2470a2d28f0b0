"""Micro-batches as padded rows or one padding-free row (worker.data.batching)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from worker.data.batching import FlatCollator, PadCollator, batching_name, is_flat, make_collator, split_packed
from worker.data.supervised import IGNORE_INDEX

A = {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE_INDEX, 6, 7]}
B = {"input_ids": [8, 9], "attention_mask": [1, 1], "labels": [8, 9]}


def test_a_flat_row_holds_every_token_once_with_positions_restarting_at_each_example():
    batch = FlatCollator()([A, B])

    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 5]
    assert batch["max_length_q"] == 3
    assert "attention_mask" not in batch  # a mask of ones would let tokens attend across examples


def test_no_example_s_first_token_is_a_target_of_the_one_before_it():
    labels = FlatCollator()([A, B])["labels"].tolist()[0]

    # B's first label (8) would be predicted from A's last token: it is ignored, B's others are kept.
    assert labels == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]


def test_the_padded_and_the_flat_batch_have_the_same_targets():
    padded = PadCollator(pad_token_id=0)([A, B])
    flat = FlatCollator()([A, B])
    shifted = padded["labels"][:, 1:]  # what the loss predicts, per row
    padded_targets = sorted(shifted[shifted != IGNORE_INDEX].tolist())
    flat_shifted = flat["labels"][:, 1:]
    assert padded_targets == sorted(flat_shifted[flat_shifted != IGNORE_INDEX].tolist())


def test_padded_rows_keep_today_s_layout():
    batch = PadCollator(pad_token_id=0)([A, B])

    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, 9, IGNORE_INDEX]]
    assert "position_ids" not in batch


def test_packed_rows_pad_their_positions_and_attend_as_one_row():
    row = {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX, 6, 7, 8, 9], "position_ids": [0, 1, 2, 0, 1]}
    batch = PadCollator(pad_token_id=0)([row, {k: v[:2] for k, v in row.items()}])

    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_a_neat_packed_row_splits_back_into_its_examples():
    row = {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX, 6, 7, 8, 9], "position_ids": [0, 1, 2, 0, 1]}

    assert split_packed(row) == [
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
        {"input_ids": [8, 9], "labels": [8, 9]},
    ]
    flat = FlatCollator()([row])
    assert flat["cu_seq_lens_q"].tolist() == [0, 3, 5]
    assert flat["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]


def test_which_batching_each_spec_gets():
    def spec(**keys: object) -> SimpleNamespace:
        return SimpleNamespace(**{"padding_free": True, "packing": None, "neat_packing": False, **keys})

    assert (is_flat(spec()), batching_name(spec())) == (True, "padding-free")
    assert (is_flat(spec(padding_free=False)), batching_name(spec(padding_free=False))) == (False, "padded")
    # plain packing attends across a row's examples: padded rows with their mask of ones, as LLaMA-Factory
    assert (is_flat(spec(packing=True)), batching_name(spec(packing=True))) == (False, "packing")
    assert is_flat(spec(neat_packing=True, padding_free=False))
    assert isinstance(make_collator(spec(), 0), FlatCollator)
    assert isinstance(make_collator(SimpleNamespace(), 0), PadCollator)  # a spec that says nothing: padded
