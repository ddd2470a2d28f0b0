"""LLaMA-Factory's packing (worker.data.packing)."""

from __future__ import annotations

import random

import pytest

from worker.data.packing import PackRows, greedy_knapsack
from worker.data.supervised import IGNORE_INDEX


def test_the_knapsack_takes_the_longest_that_still_fits_as_llamafactory_does():
    # ascending [1, 2, 3, 5, 8]; room 10: 8, then 2 (3 would not fit), then nothing; room 10: 5, 3, 1
    assert greedy_knapsack([5, 1, 8, 3, 2], 10) == [[8, 2], [5, 3, 1]]


def test_every_length_lands_in_exactly_one_row_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]

    knapsacks = greedy_knapsack(list(lengths), 128)

    assert sorted(n for sack in knapsacks for n in sack) == sorted(lengths)
    assert all(sum(sack) <= 128 for sack in knapsacks)
    assert len(knapsacks) < len(lengths) / 2


def test_a_length_beyond_capacity_is_an_error_not_a_loop():
    with pytest.raises(ValueError, match="cannot fit"):
        greedy_knapsack([200], 128)


def test_rows_concatenate_examples_with_their_own_positions_and_labels():
    batch = {
        "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
        "labels": [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 5], [IGNORE_INDEX, 7, 8, 9]],
    }

    rows = PackRows(cutoff_len=8)(batch)  # LLaMA-Factory packs to cutoff_len - 1 = 7

    assert rows["input_ids"] == [[6, 7, 8, 9, 1, 2, 3], [4, 5]]
    assert rows["position_ids"] == [[0, 1, 2, 3, 0, 1, 2], [0, 1]]
    assert rows["labels"] == [[IGNORE_INDEX, 7, 8, 9, IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 5]]


def test_an_example_longer_than_a_row_is_dropped_as_llamafactory_drops_it():
    rows = PackRows(cutoff_len=4)({"input_ids": [[1, 2, 3, 4], [5, 6]], "labels": [[1, 2, 3, 4], [5, 6]]})

    assert rows["input_ids"] == [[5, 6]]
