"""The fine-tuning method's keys, as LLaMA-Factory names them: freeze, LoRA and its variants, OFT,
QLoRA, attention and kernels, and the optimizers transformers or a maintained package provides.

A mixin of worker.spec.job_fields.JobFields, kept apart so that each file holds one group of keys.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

Modules = Annotated[str, Field(min_length=1, max_length=4096)]
QUANTIZATION_METHODS = ("bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8")


class MethodFields(BaseModel):
    """Keys of LLaMA-Factory's FinetuningArguments and the model arguments that steer training."""

    # --- freeze (LLaMA-Factory's definition: the last n layers train, or the first n when negative) ---
    freeze_trainable_layers: int = Field(default=2, ge=-100_000, le=100_000)
    freeze_trainable_modules: Modules = Field(
        default="all", description="'all' or a comma list of module names inside each trainable layer (mlp,self_attn)."
    )
    freeze_extra_modules: Modules | None = Field(
        default=None, description="Modules outside the layers that train too (e.g. embed_tokens,lm_head)."
    )

    # --- LoRA variants ---
    additional_target: Modules | None = Field(
        default=None, description="Modules trained in full and saved beside the adapter (peft's modules_to_save)."
    )
    use_rslora: bool = False
    use_dora: bool = False
    pissa_init: bool = False
    pissa_iter: int = Field(default=16, ge=-1, le=10_000, description="-1: exact SVD; n: fast SVD with n iterations.")
    pissa_convert: bool = Field(
        default=False, description="Save the PiSSA adapter as a plain LoRA adapter for the original model."
    )
    loraplus_lr_ratio: float | None = Field(default=None, gt=0.0, le=1e6)
    loraplus_lr_embedding: float = Field(default=1e-6, gt=0.0, le=1.0)
    create_new_adapter: bool = False

    # --- OFT (peft) ---
    oft_rank: int = Field(default=0, ge=0, le=65_536, description="0: set by oft_block_size.")
    oft_block_size: int = Field(default=32, ge=0, le=65_536)
    oft_target: Modules = "all"
    module_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    # --- quantization (QLoRA) ---
    quantization_method: Literal[QUANTIZATION_METHODS] = "bnb"  # type: ignore[valid-type]
    quantization_bit: Literal[4, 8] | None = None
    quantization_type: Literal["fp4", "nf4"] = "nf4"
    double_quantization: bool = True

    # --- attention, memory and kernels ---
    flash_attn: Literal["auto", "disabled", "sdpa", "fa2", "fa3"] = Field(
        default="auto", description="auto: transformers' choice; disabled: eager; sdpa; fa2 / fa3: flash-attn."
    )
    disable_gradient_checkpointing: bool | None = Field(
        default=None,
        description="LLaMA-Factory's switch, stored as gradient_checkpointing: false turns it on, true off. "
        "Unset: gradient_checkpointing decides (off by default in ftq, where LLaMA-Factory has it on).",
    )
    use_reentrant_gc: bool = True
    upcast_layernorm: bool = False
    upcast_lmhead_output: bool = False
    enable_liger_kernel: bool = Field(default=False, description="GPU only; needs the liger-kernel package.")
    use_liger_kernel: bool = Field(default=False, description="transformers' name for enable_liger_kernel.")
    moe_aux_loss_coef: float | None = Field(default=None, ge=0.0, le=1e3)
    use_fast_tokenizer: bool = True

    # --- optimizers transformers provides (with their packages) ---
    use_galore: bool = False
    galore_target: Modules = "all"
    galore_rank: int = Field(default=16, ge=1, le=65_536)
    galore_update_interval: int = Field(default=200, ge=1, le=2**31 - 1)
    galore_scale: float = Field(default=2.0, gt=0.0, le=1e6)
    galore_proj_type: Literal["std", "reverse_std", "right", "left", "full"] = "std"
    galore_layerwise: bool = False
    use_apollo: bool = False
    apollo_target: Modules = "all"
    apollo_rank: int = Field(default=16, ge=1, le=65_536)
    apollo_update_interval: int = Field(default=200, ge=1, le=2**31 - 1)
    apollo_scale: float = Field(default=32.0, gt=0.0, le=1e6)
    apollo_proj: Literal["svd", "random"] = "random"
    apollo_proj_type: Literal["std", "right", "left"] = "std"
    apollo_scale_type: Literal["channel", "tensor"] = "channel"
    apollo_layerwise: bool = False
    apollo_scale_front: bool = False
    disable_shuffling: bool = False
