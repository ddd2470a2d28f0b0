"""What ftq's Trainer does per micro-batch beyond transformers': the chunked loss, and honest token counts.

A mixin of worker.run.resume.ResumingTrainer. With `chunked` set (worker.model.chunked_loss),
training steps compute the loss by chunks instead of `model(**inputs).loss`,
then scale it for several processes exactly as Trainer.compute_loss does;
evaluation and anything asking for the outputs keep transformers' path.

Token counts: transformers counts a batch's real tokens by its attention mask,
or, without one, as the tokens that are not the pad id — wrong for a
padding-free row (no mask, and its end-of-turn tokens may share the pad id).
A row without a mask is all real tokens, so all are counted; the tokens computed
(padding included) are counted too, for the end record's pad share.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.model.chunked_loss import ChunkedLoss


class LossAndTokens:
    """Trainer mixin; see the module's docstring."""

    chunked: ChunkedLoss | None = None
    tokens_computed: int = 0

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        if self.chunked is None or return_outputs or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[misc]
        trainer: Any = self
        loss = self.chunked.compute(model, inputs, num_items_in_batch, trainer.accelerator.autocast())
        args = trainer.args
        if args.average_tokens_across_devices and trainer.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # Trainer.compute_loss's own scaling: the sum over the world's tokens is averaged by the gradient all-reduce
            scale = trainer.accelerator.num_processes // trainer.get_tp_size() if args.n_gpu <= 1 else args.n_gpu
            loss = loss * scale
        return loss

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        trainer: Any = self
        ids = inputs.get("input_ids")
        if ids is None:
            return super()._track_num_input_tokens(inputs)  # type: ignore[misc]
        count = torch.as_tensor(ids.numel(), device=trainer.args.device, dtype=torch.int64)
        computed = int(trainer.accelerator.gather(count).sum().item())  # one gather serves both counts
        self.tokens_computed += computed
        if "attention_mask" in inputs or trainer.args.include_num_input_tokens_seen != "non_padding":
            return super()._track_num_input_tokens(inputs)  # type: ignore[misc]
        trainer.state.num_input_tokens_seen += computed
        return None
