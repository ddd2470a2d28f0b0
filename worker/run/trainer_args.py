"""The TrainingArguments keywords that come from the method keys and the passed-through keys.

worker.run.recipe sets what ftq steers (where checkpoints go, logging, precision,
reporting); this module adds what the spec asks of transformers' own training
loop. Where both name the same argument:

- save_strategy and ddp_find_unused_parameters: the spec's value wins over ftq's
  default ("steps"; False under DDP). A job that saves only per epoch (or never)
  loses that much on a requeue, which is its choice; ftq still saves on cancel.
- report_to and remove_unused_columns are not passed-through keys: report_to is
  always "none" here (ftq streams its own metrics, and adds TensorBoard's callback
  itself for report_to: tensorboard, see worker.outputs.reporting) and remove_unused_columns
  false (ftq's collator needs every column it builds); worker.spec.key_fates says so.
- tf32 is a GPU setting: on a CPU slot it is dropped, and the log says so.

Pure (no torch): the argument names are looked up in the TrainingArguments class given.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from worker.spec.loss_chunks import FULL_LOGITS, LIGER
from worker.spec.methods import low_rank_optimizer
from worker.spec.passed import passed_arguments

if TYPE_CHECKING:
    from worker.spec.job import JobSpec

log = logging.getLogger(__name__)

# Liger's fused linear cross-entropy alone (its other kernels change how norms, RoPE and SwiGLU are computed,
# which enable_liger_kernel asks for and fused_cross_entropy does not).
LIGER_LOSS_ONLY = {"fused_linear_cross_entropy": True, "cross_entropy": False, "rope": False, "rms_norm": False,
                   "swiglu": False}  # fmt: skip

# ftq's values that a passed-through key of the spec replaces (see the module's docstring).
SPEC_WINS = ("save_strategy", "ddp_find_unused_parameters")


def method_arguments(
    spec: JobSpec, cuda: bool, fields: dict[str, Any] | set[str], loss_kernel: str = FULL_LOGITS
) -> dict[str, Any]:
    """TrainingArguments keywords for the spec's passed-through and method keys.

    `fields` holds TrainingArguments' field names: transformers 5 renamed
    gradient_checkpointing_kwargs to activation_checkpointing_kwargs, and the
    name this version has is used, so that no deprecation warning fills the log.
    """
    kwargs = passed_arguments(spec)
    if "tf32" in kwargs and not cuda:
        log.info("tf32 is ignored: there is no CUDA device (TF32 is an NVIDIA GPU mode)")
        del kwargs["tf32"]
    checkpointing = kwargs.pop("gradient_checkpointing_kwargs", None)
    if spec.gradient_checkpointing:
        # LLaMA-Factory's use_reentrant_gc (default true), unless the spec gives transformers' kwargs itself.
        checkpointing = checkpointing if checkpointing is not None else {"use_reentrant": spec.use_reentrant_gc}
    if checkpointing is not None:
        name = "activation_checkpointing_kwargs" if "activation_checkpointing_kwargs" in fields else None
        kwargs[name or "gradient_checkpointing_kwargs"] = checkpointing
    kwargs.update(low_rank_optimizer(spec))
    if spec.disable_shuffling:
        kwargs["train_sampling_strategy"] = "sequential"
    if spec.liger:
        kwargs["use_liger_kernel"] = True
    elif loss_kernel == LIGER:  # fused_cross_entropy on a GPU with Liger installed: its fused loss, nothing else
        kwargs["use_liger_kernel"] = True
        kwargs.setdefault("liger_kernel_config", LIGER_LOSS_ONLY)
    return kwargs


def merge_arguments(ftq: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    """ftq's keywords with the method's added; a clash other than SPEC_WINS is a bug in ftq, said loudly."""
    clashes = sorted(set(ftq) & set(method) - set(SPEC_WINS))
    if clashes:
        raise AssertionError(f"ftq sets {', '.join(clashes)} itself and would silently override the spec's value")
    for key in SPEC_WINS:
        if key in method and ftq.get(key) != method[key]:
            log.info("%s: %r from the spec replaces ftq's %r", key, method[key], ftq.get(key))
    return {**ftq, **method}
