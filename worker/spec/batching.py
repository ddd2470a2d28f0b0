"""How a job's samples become batches: padding-free rows, the micro-batch ftq picks, the loss kernel, packing.

A mixin of worker.spec.job_fields.JobFields. The first three are on by default because they
compute exactly what the padded default computes (the same samples per
optimizer step, the loss normalized over the tokens of the whole accumulated
batch; tests/integration/test_exactness.py proves it); `packing` and
`neat_packing` are LLaMA-Factory's and change the samples per step, so they
are opt-in.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class BatchingFields(BaseModel):
    """ftq's batching switches and LLaMA-Factory's packing keys."""

    padding_free: bool = Field(
        default=True,
        description="Concatenate a micro-batch's samples into one row with attention kept inside each sample "
        "(no padding computed); false pads each sample to the longest in its micro-batch.",
    )
    auto_micro_batch: bool = Field(
        default=True,
        description="On GPUs: the largest micro-batch the bound GPUs' memory holds, with gradient accumulation "
        "lowered so that micro-batch x accumulation stays what the spec asks; false keeps the spec's micro-batch.",
    )
    fused_cross_entropy: bool = Field(
        default=True,
        description="The loss without the whole logits tensor: Liger's fused kernel on a GPU where it is "
        "installed, ftq's chunked PyTorch loss otherwise; false computes all logits, then the loss.",
    )
    packing: bool | None = Field(
        default=None,
        description="LLaMA-Factory's packing: samples packed into rows of cutoff_len (greedy knapsack) that "
        "attend across samples. Changes the samples per step.",
    )
    neat_packing: bool = Field(
        default=False,
        description="Packing with attention kept inside each sample (implies packing). Changes the samples per step.",
    )

    @property
    def packs(self) -> bool:
        """Whether samples are packed into rows (neat_packing implies packing, as in LLaMA-Factory)."""
        return bool(self.packing) or self.neat_packing
