"""Attention for padding-free rows that never crosses from one example into the next, and builds no L x L mask.

transformers can already isolate the examples of a flattened row: without an
attention mask it finds them from the restarting position_ids and builds a
block-diagonal mask — a [1, 1, L, L] tensor per row, and an attention over all
L x L pairs where only the sum of each example's l x l is needed. For rows of
dozens of chats that is most of the attention's time and memory. So ftq
registers its own implementation with transformers' AttentionInterface,
"ftq_packed", that reads the example boundaries the collator passes
(`cu_seq_lens_q`, as transformers' DataCollatorWithFlattening names them for
FlashAttention) and attends within each example only:

- on a GPU in bf16/fp16, PyTorch's varlen FlashAttention (torch.nn.attention.varlen),
  one kernel for the whole row, no mask at all;
- otherwise (CPU, fp32, attention dropout, a sliding window shorter than an
  example) transformers' SDPA path on each example in turn, causal, without a mask
  (or with the example's own sliding-window mask).

Eager, flex and FlashAttention-2/3, when the spec asks for them by name, keep
transformers' own handling of packed rows (the block mask; varlen from cu_seq_lens).
transformers gives an implementation it has no mask function for no mask, which
is what this one wants.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

log = logging.getLogger(__name__)

NAME = "ftq_packed"
BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
# What a config may hold that this implementation does not compute: such a model keeps transformers' own path.
UNSUPPORTED_CONFIG = ("attn_logit_softcapping",)

try:  # PyTorch 2.9+, CUDA only
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older PyTorch
    varlen_attn = None
# Set when the varlen kernel refused this GPU or build once: every later call takes the per-example path.
_varlen_refused: list[str] = []


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: q [1, heads, L, d], k/v [1, kv heads, L, d] -> ([1, L, heads, d], None)."""
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{NAME} attends within padding-free rows only (batch 1, no attention mask)")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError(f"{NAME} computes neither soft-capped scores nor attention sinks")
    bounds = boundaries(kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids"), query.shape[2])
    window = kwargs.get("sliding_window")
    longest = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    if _varlen_fits(query, dropout, window, longest):
        try:
            return _varlen(query, key, value, bounds, longest, scaling), None
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise
            _varlen_refused.append(str(exc))  # e.g. a GPU or head size its FlashAttention build lacks
            log.warning("varlen FlashAttention refused this row (%s); attending per example with SDPA", exc)
    rest = {k: v for k, v in kwargs.items() if k not in (*BOUNDARY_KEYS, "position_ids", "sliding_window")}
    outputs = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        span = slice(start, end)
        mask = _window_mask(end - start, window, query.device) if window and end - start > window else None
        out, _ = sdpa_attention_forward(
            module, query[:, :, span], key[:, :, span], value[:, :, span], mask,
            dropout=dropout, scaling=scaling, is_causal=mask is None, **rest,
        )  # fmt: skip
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def boundaries(cu_seq_lens: torch.Tensor | None, position_ids: torch.Tensor | None, length: int) -> list[int]:
    """Where each example starts, and the row's end: from the collator's cu_seq_lens, else where the positions
    restart at 0, else the row is one example."""
    if cu_seq_lens is not None:
        found = [int(x) for x in cu_seq_lens.tolist()]
    elif position_ids is not None:
        starts = (position_ids[0] == 0).nonzero().flatten().tolist()
        found = [*(starts if starts and starts[0] == 0 else [0, *starts]), length]
    else:
        found = [0, length]
    if found[0] != 0 or found[-1] != length or any(b <= a for a, b in zip(found, found[1:], strict=False)):
        raise ValueError(f"{NAME}: example boundaries {found[:8]}... do not split a row of {length} tokens")
    return found


def _varlen_fits(query: torch.Tensor, dropout: float, window: int | None, longest: int) -> bool:
    return (
        varlen_attn is not None
        and not _varlen_refused
        and query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and dropout == 0.0
        and not (window and longest > window)
    )


def _varlen(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: list[int], longest: int, scale: float | None
) -> torch.Tensor:
    cu = torch.tensor(bounds, dtype=torch.int32, device=query.device)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [L, heads, d]
    out = varlen_attn(
        q, k, v, cu, cu, longest, longest, scale=scale, window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.unsqueeze(0)


def _window_mask(length: int, window: int, device: torch.device) -> torch.Tensor:
    """Causal within the last `window` tokens, as transformers' sliding-window mask (True: attend)."""
    i = torch.arange(length, device=device)
    return ((i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window))[None, None]


def register() -> str:
    """Make NAME known to transformers (idempotent); returns it."""
    AttentionInterface.register(NAME, packed_attention)
    return NAME


def packed_implementation(asked: str | None, config: dict[str, Any]) -> str | None:
    """The attn_implementation for padding-free rows: NAME where the spec leaves it to ftq (auto) or asks for
    sdpa and the model (its config.json as a dict) computes nothing NAME does not; otherwise what was asked
    (None: transformers' choice, which isolates the examples with its block mask)."""
    if asked not in (None, "sdpa"):
        return asked
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    if any(part.get(key) for part in (config, text) for key in UNSUPPORTED_CONFIG):
        return asked
    return NAME
