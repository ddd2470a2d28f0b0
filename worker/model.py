"""Tokenizer and model for a job: local files only, LoRA or full fine-tuning."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from worker.spec import JobSpec

log = logging.getLogger(__name__)


def load_tokenizer(spec: JobSpec) -> PreTrainedTokenizerBase:
    """The model's own tokenizer, right-padded, with eos standing in for a missing pad token."""
    tokenizer = AutoTokenizer.from_pretrained(
        spec.model_name_or_path, local_files_only=True, trust_remote_code=spec.trust_remote_code
    )
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer in {spec.model_name_or_path} has neither a pad nor an eos token")
        # Padding is masked out of attention and labels, so which id it uses does not matter.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pick_dtype(spec: JobSpec, cuda: bool) -> torch.dtype:
    """The dtype to load weights in.

    On CPU, float32: mixed precision is a GPU matter. With full fine-tuning the
    weights stay float32 as master weights and bf16/fp16 come from autocast
    (LLaMA-Factory does the same unless pure_bf16). With LoRA the frozen base is
    loaded in half precision and peft keeps the adapter weights in float32.

    pure_bf16 (LLaMA-Factory's meaning) loads bfloat16 everywhere, full
    fine-tuning included, and trains without an fp32 master copy. CPUs do
    bfloat16 arithmetic too, so it holds there as well.
    """
    if spec.pure_bf16:
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("pure_bf16 is true but this GPU does not support bfloat16; use fp16: true instead")
        return torch.bfloat16
    if not cuda or spec.finetuning_type == "full":
        return torch.float32
    if spec.bf16:
        if not torch.cuda.is_bf16_supported():
            raise ValueError("bf16 is true but this GPU does not support bfloat16; use fp16: true instead")
        return torch.bfloat16
    if spec.fp16:
        return torch.float16
    return torch.float32


def load_model(spec: JobSpec, cuda: bool) -> Any:
    """The causal LM ready for training: a peft model for LoRA, all parameters trainable for full."""
    dtype = pick_dtype(spec, cuda)
    model = AutoModelForCausalLM.from_pretrained(
        spec.model_name_or_path,
        local_files_only=True,
        trust_remote_code=spec.trust_remote_code,
        dtype=dtype,
    )
    log.info("loaded %s (%s) in %s", spec.model_name_or_path, type(model).__name__, dtype)
    if spec.gradient_checkpointing:
        # The KV cache is useless in training and conflicts with recomputation.
        model.config.use_cache = False
    if spec.finetuning_type == "lora":
        model = _wrap_lora(model, spec)
    else:
        model.requires_grad_(True)
    trainable, total = count_parameters(model)
    log.info("trainable params: %s of %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return model


def _wrap_lora(model: Any, spec: JobSpec) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model  # peft is slow to import; only LoRA jobs pay for it

    if spec.gradient_checkpointing:
        # The frozen embeddings' output has no grad, so checkpointed blocks would give the adapters none either.
        model.enable_input_require_grads()
    target: str | list[str] = (
        "all-linear" if spec.lora_target == "all" else [name.strip() for name in spec.lora_target.split(",")]
    )
    config = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.effective_lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=target,
        task_type=TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
