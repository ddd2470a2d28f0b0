"""worker.data.supervised: LLaMA-Factory's truncation and labels for one supervised example.

Expected numbers are worked out by hand from LF's infer_seqlen (data/processor/processor_utils.py) and
SupervisedDatasetProcessor._encode_data_example (supervised.py) at v0.9.5, commit
7af909522a951e3ad9f022ea6f88b6755257eaa5. Ids are plain small integers: no tokenizer is needed.
"""

from __future__ import annotations

import pytest

from worker.data.supervised import IGNORE_INDEX, encode_supervised, infer_seqlen

X = IGNORE_INDEX
PAIRS = [([1, 2, 3], [4, 5]), ([6, 7], [8, 9, 10])]


@pytest.mark.parametrize(
    ("source", "target", "cutoff", "expected"),
    [
        (10, 5, 100, (10, 5)),  # everything fits
        (100, 10, 50, (40, 10)),  # short response: the prompt is cut
        (10, 100, 50, (10, 40)),  # short prompt: the response is cut
        (60, 40, 50, (30, 20)),  # both long: int(50 * 40 / 100) = 20 for the response, the rest for the prompt
        (3, 7, 9, (3, 6)),
        (3, 2, 1, (1, 0)),  # int(1 * 2 / 5) = 0: only the prompt gets a token
        (4, 1, 0, (0, 0)),
    ],
)
def test_infer_seqlen(source: int, target: int, cutoff: int, expected: tuple[int, int]) -> None:
    assert infer_seqlen(source, target, cutoff) == expected


def test_prompts_are_masked_and_responses_labelled() -> None:
    assert encode_supervised(PAIRS, cutoff_len=100) == {
        "input_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "attention_mask": [1] * 10,
        "labels": [X, X, X, 4, 5, X, X, 8, 9, 10],
    }


def test_each_turn_is_cut_against_what_is_left() -> None:
    # turn 1: infer_seqlen(3, 2, 7) = (3, 2), 5 used; turn 2: infer_seqlen(2, 3, 2) = (1, 1)
    example = encode_supervised(PAIRS, cutoff_len=7)
    assert example["input_ids"] == [1, 2, 3, 4, 5, 6, 8]
    assert example["labels"] == [X, X, X, 4, 5, X, 8]


def test_turns_past_the_cutoff_are_dropped() -> None:
    example = encode_supervised(PAIRS, cutoff_len=5)
    assert example["input_ids"] == [1, 2, 3, 4, 5]  # the second turn never starts


def test_train_on_prompt_labels_everything() -> None:
    example = encode_supervised(PAIRS, cutoff_len=100, train_on_prompt=True)
    assert example["labels"] == example["input_ids"] == list(range(1, 11))


def test_mask_history_trains_on_the_last_answer_only() -> None:
    example = encode_supervised(PAIRS, cutoff_len=100, mask_history=True)
    assert example["input_ids"] == list(range(1, 11))  # still in conversation order
    assert example["labels"] == [X] * 7 + [8, 9, 10]


def test_mask_history_fits_the_last_turn_first() -> None:
    # last turn first: infer_seqlen(2, 3, 6) = (2, 3), 5 used; then the first: infer_seqlen(3, 2, 1) = (1, 0)
    example = encode_supervised(PAIRS, cutoff_len=6, mask_history=True)
    assert example["input_ids"] == [1, 6, 7, 8, 9, 10]
    assert example["labels"] == [X, X, X, 8, 9, 10]


def test_efficient_eos_labels_the_next_prompts_first_token_and_closes_with_eos() -> None:
    example = encode_supervised(PAIRS, cutoff_len=100, efficient_eos=True, eos_token_id=99)
    assert example["input_ids"] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99]
    assert example["labels"] == [X, X, X, 4, 5, 99, X, 8, 9, 10, 99]


def test_efficient_eos_keeps_room_for_the_closing_eos() -> None:
    # total starts at 1: turn 1 infer_seqlen(3, 2, 6) = (3, 2), then 6 >= 6 stops the second turn
    example = encode_supervised(PAIRS, cutoff_len=6, efficient_eos=True, eos_token_id=99)
    assert example["input_ids"] == [1, 2, 3, 4, 5, 99]
    assert len(example["input_ids"]) <= 6


def test_efficient_eos_with_mask_history() -> None:
    example = encode_supervised(PAIRS, cutoff_len=100, mask_history=True, efficient_eos=True, eos_token_id=99)
    # reversed, the first pair is turn 1: its prompt carries the eos label, its answer is masked
    assert example["labels"] == [99, X, X, X, X, X, X, 8, 9, 10, 99]


def test_none_when_no_label_survives() -> None:
    assert encode_supervised([([1, 2, 3, 4], [5])], cutoff_len=1) is None  # infer_seqlen(4, 1, 1) = (1, 0)
    assert encode_supervised([([1, 2], [])], cutoff_len=10) is None
    assert encode_supervised([([1, 2], [3])], cutoff_len=10, mask_history=True) is not None


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"train_on_prompt": True, "efficient_eos": True, "eos_token_id": 2}, "efficient_eos"),
        ({"train_on_prompt": True, "mask_history": True}, "mask_history"),
        ({"efficient_eos": True}, "eos_token_id"),
    ],
)
def test_combinations_lf_refuses(kwargs: dict, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        encode_supervised(PAIRS, cutoff_len=100, **kwargs)
