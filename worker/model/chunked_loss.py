"""The causal-LM loss without the logits of the whole micro-batch: output layer and cross-entropy by chunks.

transformers computes logits for every position of every row (B x T x V, cast
to fp32 for the loss) and keeps them for backward; for a 0.5B model with a
152k vocabulary that is the largest allocation of a step. Here the model runs
without its output layer (`logits_to_keep` empty: it returns no logits), the
final hidden states are taken from the decoder with a forward hook, and the
loss is the sum over chunks of at most worker.spec.loss_chunks.chunk_tokens(V)
labelled positions: output layer, fp32 cross-entropy (sum), each chunk under
activation checkpointing (torch.utils.checkpoint), so its logits are freed at
once and recomputed in backward. Positions without a label are never projected.
The sum is divided by `num_items_in_batch` (the labelled tokens of the whole
accumulated batch) exactly as transformers' ForCausalLMLoss divides it, so the
loss and its gradients are the same to float rounding.

This is ftq's own code because no maintained package offers it for every
backend: Liger's fused kernel (used instead on GPUs where it is installed,
worker.run.trainer_args) is Triton, GPU-only. The output layer is called as a module,
so a LoRA-wrapped or upcast (upcast_lmhead_output) head works unchanged.

A model that changes its logits after the output layer would be trained on the
wrong loss here; worker.spec.loss_chunks keeps the known ones off this path, and
`matches_model` checks on one example, before training, that this path gives
the model's own logits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from worker.data.supervised import IGNORE_INDEX
from worker.spec.loss_chunks import chunk_tokens

log = logging.getLogger(__name__)


def causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: torch.nn.Module,
    num_items_in_batch: torch.Tensor | int | None,
    chunk: int,
) -> torch.Tensor:
    """transformers' ForCausalLMLoss over head(hidden), computed chunk by chunk over the labelled positions."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)  # position t predicts label t + 1
    flat = hidden.reshape(-1, hidden.shape[-1])
    keep = (targets != IGNORE_INDEX).nonzero().flatten()
    flat, targets = flat.index_select(0, keep), targets.index_select(0, keep)
    total = flat.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(_chunk_loss, head, flat[part], targets[part], use_reentrant=False)
    if num_items_in_batch is None:  # transformers' mean over this micro-batch's labels
        return total / targets.numel()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


class ChunkedLoss:
    """The model's loss by chunks; `compute` stands in for `model(**inputs).loss` in training."""

    def __init__(self, model: Any, vocab_size: int) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
        self.decoder: torch.nn.Module = base.get_decoder()
        self.head: torch.nn.Module = base.get_output_embeddings()
        self.chunk = chunk_tokens(vocab_size)

    def compute(
        self,
        model: Callable[..., Any],
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
        autocast: contextlib.AbstractContextManager[Any] | None = None,
    ) -> torch.Tensor:
        rest = {key: value for key, value in inputs.items() if key != "labels"}
        hidden = self._hidden(model, rest)
        with autocast or contextlib.nullcontext():  # the output layer in the precision the model runs in
            return causal_lm_loss(hidden, inputs["labels"], self.head, num_items_in_batch, self.chunk)

    def _hidden(self, model: Callable[..., Any], inputs: dict[str, Any]) -> torch.Tensor:
        """The decoder's final hidden states from a forward pass that projects no position."""
        device = inputs["input_ids"].device
        hidden, _ = self._run(model, inputs, logits_to_keep=torch.empty(0, dtype=torch.long, device=device))
        return hidden

    def _run(self, model: Callable[..., Any], inputs: dict[str, Any], **extra: Any) -> tuple[torch.Tensor, Any]:
        """(the decoder's final hidden states, the model's output) of one forward pass."""
        captured: list[torch.Tensor] = []

        def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

        handle = self.decoder.register_forward_hook(keep)
        try:
            output = model(**inputs, **extra)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the decoder ran {len(captured)} times in one forward pass; expected once")
        return captured[0], output

    def matches_model(self, model: Any, input_ids: list[int]) -> bool:
        """Whether head(decoder(x)) is the model's own logits on one example (eval mode: no dropout)."""
        ids = torch.tensor([input_ids[:64]], device=next(model.parameters()).device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                hidden, output = self._run(model, {"input_ids": ids}, use_cache=False)
                reference, mine = output.logits, self.head(hidden)
        except Exception as exc:  # noqa: BLE001 - any model this path cannot drive keeps transformers' loss
            log.info("fused_cross_entropy: the model cannot be run without its output layer (%s)", exc)
            return False
        finally:
            model.train(was_training)
        return mine.shape == reference.shape and torch.allclose(mine.float(), reference.float(), rtol=1e-4, atol=1e-4)
