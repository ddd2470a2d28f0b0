"""The model-level switches LLaMA-Factory applies around loading: MoE aux loss, fp32 norms and logits.

Each is LLaMA-Factory's (model_utils/moe.py, model_utils/checkpointing.py's
prepare_model_for_training), written against transformers' config attributes
rather than its list of model types, so a new MoE family needs no entry here.
Attention (flash_attn) is only a name for from_pretrained: worker.spec.methods maps it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from worker.spec.loss_chunks import AUX_LOSS_NAMES

log = logging.getLogger(__name__)

# LLaMA-Factory's LAYERNORM_NAMES: a 1-D parameter whose name holds one of these is a norm's weight or bias.
NORM_NAMES = ("norm", "ln")


def configure_moe(config: Any, coef: float | None) -> list[str]:
    """Set moe_aux_loss_coef on a config (and its text_config) that has a router aux loss; what was set.

    output_router_logits turns the aux loss on: without it the router's logits
    are not returned and the loss is the language-model loss alone.
    """
    if not coef:
        return []
    done = []
    for part, where in ((config, ""), (getattr(config, "text_config", None), "text_config.")):
        if part is None:
            continue
        for name in AUX_LOSS_NAMES:
            if hasattr(part, name):
                setattr(part, name, coef)
                done.append(f"{where}{name}={coef}")
        if hasattr(part, "output_router_logits") and any(hasattr(part, name) for name in AUX_LOSS_NAMES):
            part.output_router_logits = True
            done.append(f"{where}output_router_logits=True")
    if not done:
        log.warning("moe_aux_loss_coef: %s has no router aux loss; the key changes nothing", type(config).__name__)
    return done


def upcast_layernorm(model: torch.nn.Module) -> list[str]:
    """Norm weights in float32 (LLaMA-Factory's upcast_layernorm); the names of the parameters cast."""
    cast = []
    for name, param in model.named_parameters():
        if param.ndim == 1 and any(norm in name for norm in NORM_NAMES) and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)
            cast.append(name)
    log.info("upcast_layernorm: %d norm parameters in float32", len(cast))
    return cast


def _fp32_output(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    return output.to(torch.float32)


def upcast_lmhead_output(model: Any) -> bool:
    """Cast lm_head's output (the logits) to float32 with a forward hook, as LLaMA-Factory does; False if no need.

    The loss over a large vocabulary is where half precision loses most; a head
    already in float32 needs no hook.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype == torch.float32:
        log.info("upcast_lmhead_output: the output layer already computes in float32")
        return False
    head.register_forward_hook(_fp32_output)
    log.info("upcast_lmhead_output: lm_head outputs cast to float32")
    return True
