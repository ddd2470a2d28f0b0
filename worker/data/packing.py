"""LLaMA-Factory's packing: encoded examples packed into rows of at most cutoff_len tokens.

Opt-in (`packing: true`, or `neat_packing: true`), because it changes what a
step computes: a micro-batch of rows holds many examples, so an optimizer step
sees more samples than per_device_train_batch_size x gradient_accumulation_steps.

The rows are LLaMA-Factory's (data/processor/supervised.py,
PackedSupervisedDatasetProcessor, v0.9.5): within each preprocessing batch the
examples' lengths go through its greedy knapsack (ascending sort, then the
longest that still fits, by binary search), and each knapsack's examples are
concatenated with `position_ids` restarting at every example. LLaMA-Factory pads
each row to cutoff_len + 1 for flash-attn; ftq does not (worker.data.batching pads a
micro-batch to its longest row, or needs no padding at all). Plain packing lets
a row's examples attend to each other, as LLaMA-Factory's does; neat packing
keeps attention inside each example (worker.data.batching splits the rows again).
Like LLaMA-Factory, packing measures against cutoff_len - 1 where an example
longer than that is dropped.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

Rows = dict[str, list[list[int]]]


def greedy_knapsack(lengths: list[int], capacity: int) -> list[list[int]]:
    """LLaMA-Factory's greedy knapsack over lengths: each knapsack takes the longest length that still fits."""
    remaining = sorted(lengths)
    knapsacks = []
    while remaining:
        knapsack, room = [], capacity
        while True:
            index = bisect.bisect(remaining, room) - 1
            if index < 0:
                break
            room -= remaining[index]
            knapsack.append(remaining.pop(index))
        if not knapsack:  # a length beyond capacity: the caller drops those first
            raise ValueError(f"an example of {remaining[0]} tokens cannot fit a row of {capacity}")
        knapsacks.append(knapsack)
    return knapsacks


@dataclass
class PackRows:
    """A datasets.map function (batched) from encoded examples to packed rows with position_ids."""

    cutoff_len: int

    def __call__(self, batch: Rows) -> Rows:
        capacity = self.cutoff_len - 1  # LLaMA-Factory's cutoff_len -= 1 under packing
        by_length: dict[int, list[int]] = defaultdict(list)
        lengths = []
        for index, ids in enumerate(batch["input_ids"]):
            if len(ids) <= capacity:
                by_length[len(ids)].append(index)
                lengths.append(len(ids))
        rows: Rows = {"input_ids": [], "labels": [], "position_ids": []}
        for knapsack in greedy_knapsack(lengths, capacity):
            ids, labels, positions = [], [], []
            for length in knapsack:
                index = by_length[length].pop()  # the last example of this length, as LLaMA-Factory takes it
                ids += batch["input_ids"][index]
                labels += batch["labels"][index]
                positions += range(length)
            rows["input_ids"].append(ids)
            rows["labels"].append(labels)
            rows["position_ids"].append(positions)
        return rows
