"""How ftq's chunked cross-entropy cuts the logits, and which models it cannot serve: shared by the worker
(worker.model.chunked_loss) and the memory estimate (scheduler.policy.estimate), so both count the same chunk.

Pure: no torch.
"""

from __future__ import annotations

from typing import Any

# Logits alive at once in the chunked loss: 2**27 fp32 logits are 512 MiB, e.g. ~880 tokens of a 152k vocabulary.
# Large enough that each chunk's matmul keeps a GPU busy, small enough to be a rounding error beside B x T x V.
CHUNK_LOGITS = 2**27
MIN_CHUNK_TOKENS = 64

# config.json keys by which a model changes its logits after the output layer (Gemma 2/3's soft-capping,
# Cohere's and Granite's scaling) or adds a loss of its own (a MoE router's aux loss): the chunked loss computes
# output_layer(hidden) and its cross-entropy only, so such a model keeps transformers' own loss.
LOGIT_CHANGERS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_router_logits")
# The aux-loss coefficient under the names MoE configs give it (Mixtral, Qwen-MoE …; DeepSeek; JetMoE):
# moe_aux_loss_coef turns the router's aux loss on where the config has one (worker.model.kernels).
AUX_LOSS_NAMES = ("router_aux_loss_coef", "aux_loss_alpha", "aux_loss_coef")

LIGER = "liger"
CHUNKED = "chunked"
FULL_LOGITS = "full logits"


def chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk of the chunked cross-entropy for a vocabulary of this size."""
    return max(MIN_CHUNK_TOKENS, CHUNK_LOGITS // max(vocab_size, 1))


def loss_blockers(config: dict[str, Any], moe_aux_loss_coef: float | None = None) -> list[str]:
    """The config.json keys (top level or text_config) that keep this model on transformers' own loss."""
    text_config = config.get("text_config")
    parts: list[dict[str, Any]] = [config, text_config if isinstance(text_config, dict) else {}]
    found = [key for key in LOGIT_CHANGERS for part in parts if part.get(key) not in (None, False, 1, 1.0)]
    if moe_aux_loss_coef:
        found += [key for key in AUX_LOSS_NAMES for part in parts if key in part]
    return found


def loss_kernel(spec: Any, config: dict[str, Any], *, cuda: bool, zero_stage: int, liger_installed: bool) -> str:
    """How the job computes its loss: LIGER, CHUNKED or FULL_LOGITS (see worker.model.chunked_loss).

    enable_liger_kernel asks for Liger's kernels outright (their fused loss among them). Otherwise
    fused_cross_entropy takes Liger's fused loss on a GPU where it is installed, ftq's chunked loss elsewhere;
    a model that changes its logits or adds a loss, and ZeRO-3 (whose partitioned output layer is gathered
    only inside the model's own forward), keep the full logits.
    """
    if getattr(spec, "enable_liger_kernel", False) or getattr(spec, "use_liger_kernel", False):
        return LIGER
    if not getattr(spec, "fused_cross_entropy", False) or zero_stage >= 3:
        return FULL_LOGITS
    if loss_blockers(config, getattr(spec, "moe_aux_loss_coef", None)):
        return FULL_LOGITS
    return LIGER if cuda and liger_installed else CHUNKED
