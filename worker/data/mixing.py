"""Several datasets as one (mix_strategy), and the held-out part of it (val_size).

Mixing is LLaMA-Factory's merge_dataset (src/llamafactory/data/data_utils.py):
one dataset as it is; `concat` one after the other; `interleave_under` and
`interleave_over` through datasets.interleave_datasets with interleave_probs and
the seed, stopping when the first dataset runs out (first_exhausted) or when every
one has been seen whole (all_exhausted, oversampling the small ones).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, concatenate_datasets, interleave_datasets

from worker.preflight.dataset_info import DataError

STOPPING = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted"}


def merge_datasets(datasets: Sequence[Dataset], strategy: str, probs: list[float] | None, seed: int) -> Dataset:
    if len(datasets) == 1:
        return datasets[0]
    if strategy == "concat":
        return concatenate_datasets(list(datasets))
    if strategy not in STOPPING:
        raise DataError(f"mix_strategy {strategy!r} is unknown (concat, interleave_under or interleave_over)")
    return interleave_datasets(list(datasets), probabilities=probs, seed=seed, stopping_strategy=STOPPING[strategy])


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


def split_dataset(dataset: Dataset, val_size: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """split_examples on a Dataset: the same examples held out as from a list of the same length."""
    if val_size <= 0:
        return dataset, None
    train, held_out = split_examples(list(range(len(dataset))), val_size, seed)
    return dataset.select(train), dataset.select(held_out)
