"""From encoded examples to the tensors of one micro-batch: padded rows, or one padding-free row.

Padded (`padding_free: false`, LLaMA-Factory's and transformers' default): each
example right-padded to the longest of its micro-batch, with an attention mask.

Padding-free (the default): the micro-batch's examples concatenated into one row
of shape [1, total tokens], by transformers' DataCollatorWithFlattening, with
`position_ids` restarting at each example, the first label of each example
ignored (so no example's first token is predicted from the one before it) and
the example boundaries as `cu_seq_lens_q/k` — which FlashAttention's varlen
kernels and ftq's per-example attention (worker.model.packed_attention) read. There
is no attention mask: a 2-D mask of ones would let every token attend across
examples. The same examples are in each micro-batch and the loss is normalized
over the labelled tokens of the whole accumulated batch, as in the padded run,
so each step computes the same loss.

Packed rows (worker.data.packing) carry their own `position_ids`: plain packing pads
them like examples and attends across the examples of a row, as LLaMA-Factory
does; neat packing splits each row back into its examples before flattening, so
attention stays inside each example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DataCollatorWithFlattening

from worker.data.supervised import IGNORE_INDEX

Example = dict[str, list[int]]


@dataclass
class PadCollator:
    """Right-pads a micro-batch: pad id for input_ids, 0 for attention_mask and position_ids, -100 for labels."""

    pad_token_id: int

    def __call__(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in batch)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        if "position_ids" in batch[0]:  # packed rows number their examples' positions themselves
            pads["position_ids"] = 0
        rows = [
            example if "attention_mask" in example else {**example, "attention_mask": [1] * len(example["input_ids"])}
            for example in batch
        ]
        return {
            key: torch.tensor([ex[key] + [pad] * (width - len(ex[key])) for ex in rows], dtype=torch.long)
            for key, pad in pads.items()
        }


@dataclass
class FlatCollator:
    """A micro-batch as one row without padding (see the module's docstring); neat-packed rows are split first."""

    flatten: DataCollatorWithFlattening = field(
        default_factory=lambda: DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE_INDEX, return_flash_attn_kwargs=True
        )
    )

    def __call__(self, batch: list[Example]) -> dict[str, Any]:
        examples = [part for row in batch for part in split_packed(row)]
        return self.flatten([{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in examples])


def split_packed(row: Example) -> list[Example]:
    """A neat-packed row's examples (each starts where position_ids restart at 0); any other row as it is."""
    positions = row.get("position_ids")
    if positions is None:
        return [row]
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return [
        {"input_ids": row["input_ids"][a:b], "labels": row["labels"][a:b]}
        for a, b in zip(starts, starts[1:], strict=False)
        if b > a
    ]


def is_flat(spec: Any) -> bool:
    """Whether the spec's micro-batches are padding-free rows: neat packing always; plain packing never (it
    attends across a row's examples, which needs the padded rows' all-ones mask); otherwise padding_free."""
    if getattr(spec, "neat_packing", False):
        return True
    if getattr(spec, "packing", None):
        return False
    return bool(getattr(spec, "padding_free", False))


def make_collator(spec: Any, pad_token_id: int) -> PadCollator | FlatCollator:
    return FlatCollator() if is_flat(spec) else PadCollator(pad_token_id)


def batching_name(spec: Any) -> str:
    """How the start record names the spec's batching."""
    if getattr(spec, "neat_packing", False):
        return "neat packing"
    if getattr(spec, "packing", None):
        return "packing"
    return "padding-free" if is_flat(spec) else "padded"
