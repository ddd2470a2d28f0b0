"""Tokenizer and model for a job: local files only, loaded and set up for its fine-tuning method.

The order is LLaMA-Factory's (model/loader.py): the config is patched (attention,
MoE aux loss, quantization), the model loads, it is prepared for training (fp32
norms and logits), and then the method picks what trains (worker.model.adapters).

Right before each from_pretrained every file of the model directory is checked
(worker.preflight.modelfiles: inside the input dirs, regular, safetensors headers whole),
and a load that fails on a file says which file: a truncated tokenizer.json is
named with its line and column, not left as a bare decode error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled

from worker.data.batching import is_flat
from worker.launch.oom import exception_is_oom
from worker.model.adapters import setup_method
from worker.model.kernels import configure_moe, upcast_layernorm, upcast_lmhead_output
from worker.model.packed_attention import NAME as PACKED_ATTENTION
from worker.model.packed_attention import packed_implementation, register
from worker.model.quantize import is_quantized, quantization_kwargs
from worker.preflight.confine import BadFile, Roots, remote_code_allowed, show
from worker.preflight.modelfiles import TOKENIZER_FILES, bad_file_behind, check_model_files
from worker.spec.job import JobSpec
from worker.spec.methods import attn_implementation

log = logging.getLogger(__name__)


class ModelLoadError(BadFile):
    """The tokenizer or the model cannot be loaded from the model directory's files; bad input."""


def load_tokenizer(spec: JobSpec, roots: Roots = None) -> PreTrainedTokenizerBase:
    """The model's own tokenizer, right-padded, with eos standing in for a missing pad token."""
    check_before_loading(spec.model_name_or_path, roots)
    if not spec.use_fast_tokenizer:
        log.info("use_fast_tokenizer: false has no effect: transformers 5 always loads the fast tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            spec.model_name_or_path,
            local_files_only=True,
            trust_remote_code=_trust_remote_code(spec),
            use_fast=spec.use_fast_tokenizer,
        )
    except Exception as exc:
        error = load_error("tokenizer", spec.model_name_or_path, roots, exc, TOKENIZER_FILES)
        if error is None:
            raise
        raise error from exc
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            why = f"the tokenizer in {spec.model_name_or_path} has neither a pad nor an eos token"
            raise ModelLoadError(spec.model_name_or_path, why)
        # Padding is masked out of attention and labels, so which id it uses does not matter.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pick_dtype(spec: JobSpec, cuda: bool) -> torch.dtype:
    """The dtype to load weights in.

    On CPU, float32: mixed precision is a GPU matter. With full fine-tuning the
    weights stay float32 as master weights and bf16/fp16 come from autocast
    (LLaMA-Factory does the same unless pure_bf16). With LoRA, OFT and freeze the
    frozen base is loaded in half precision (QLoRA's compute dtype too) and the
    parameters that train are kept in float32 (worker.model.adapters).

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


def load_model(spec: JobSpec, cuda: bool, roots: Roots = None) -> Any:
    """The causal LM ready for training, with exactly the parameters of its method trainable."""
    dtype = pick_dtype(spec, cuda)
    zero3 = is_deepspeed_zero3_enabled()  # known by now: the TrainingArguments are made before the model
    check_before_loading(spec.model_name_or_path, roots)
    config = _loaded(
        spec,
        roots,
        lambda: AutoConfig.from_pretrained(
            spec.model_name_or_path, local_files_only=True, trust_remote_code=_trust_remote_code(spec)
        ),
    )
    for setting in configure_moe(config, spec.moe_aux_loss_coef):
        log.info("moe_aux_loss_coef: %s", setting)
    extra = quantization_kwargs(spec, config, dtype, zero3)
    attention = model_attention(spec, config.to_dict())
    if attention is not None:
        extra["attn_implementation"] = attention
    model = _loaded(
        spec,
        roots,
        lambda: AutoModelForCausalLM.from_pretrained(
            spec.model_name_or_path,
            config=config,
            local_files_only=True,
            trust_remote_code=_trust_remote_code(spec),
            dtype=dtype,
            **extra,
        ),
    )
    quantized = is_quantized(spec, config)
    log.info(
        "loaded %s (%s) in %s with %s attention%s",
        spec.model_name_or_path, type(model).__name__, dtype, model.config._attn_implementation,
        " (quantized)" if quantized else "",
    )  # fmt: skip
    if spec.gradient_checkpointing or is_flat(spec):
        # The KV cache is useless in training and conflicts with recomputation. With padding-free rows it would
        # also be wrong: transformers looks for the examples of a row (restarting position_ids) only without a
        # cache, and otherwise lets every token attend across the row.
        model.config.use_cache = False
    if spec.upcast_layernorm:
        upcast_layernorm(model)
    if spec.upcast_lmhead_output:
        upcast_lmhead_output(model)
    # LLaMA-Factory's rule: trainable parameters in float32 unless pure_bf16, or ZeRO-3 (which keeps fp32 itself)
    # without quantization.
    cast_fp32 = not spec.pure_bf16 and (spec.quantization_bit is not None or not zero3)
    model = setup_method(model, spec, cast_fp32=cast_fp32, quantized=quantized, zero3=zero3, roots=roots)
    trainable, total = count_parameters(model)
    log.info("trainable params: %s of %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return model


def model_attention(spec: JobSpec, config: dict[str, Any]) -> str | None:
    """transformers' attn_implementation for the job: the spec's flash_attn, or ftq's per-example attention
    for padding-free rows where the spec leaves the choice (worker.model.packed_attention)."""
    asked = attn_implementation(spec.flash_attn)
    if not is_flat(spec):
        return asked
    chosen = packed_implementation(asked, config)
    if chosen == PACKED_ATTENTION:
        register()
    return chosen


def _loaded(spec: JobSpec, roots: Roots, load: Callable[[], Any]) -> Any:
    """What `load` returns; a failure that a file of the model directory explains is bad input naming it."""
    try:
        return load()
    except Exception as exc:
        error = load_error("model", spec.model_name_or_path, roots, exc, ("config.json",))
        if error is None:
            raise
        raise error from exc


def check_before_loading(model_dir: str, roots: Roots) -> None:
    """Every file of the model directory as worker.preflight.modelfiles wants it,
    checked just before transformers opens them."""
    problems = check_model_files(model_dir, roots)
    if problems:
        raise ModelLoadError(model_dir, "; ".join(problems))


def load_error(
    what: str, model_dir: str, roots: Roots, exc: Exception, first: tuple[str, ...]
) -> ModelLoadError | None:
    """A failed load as bad input naming the file behind it; None for an out-of-memory, which stays what it is."""
    if exception_is_oom(exc) or isinstance(exc, MemoryError):
        return None
    cause = f"{type(exc).__name__}: {str(exc).strip()}"[:500]
    bad = bad_file_behind(model_dir, roots, first)
    if bad is not None:
        return ModelLoadError(bad.path, f"loading the {what} from {show(model_dir)} failed on a file: {bad} ({cause})")
    return ModelLoadError(model_dir, f"the {what} in {show(model_dir)} cannot be loaded: {cause}")


def _trust_remote_code(spec: JobSpec) -> bool:
    # worker.run.validate has refused the spec already when the daemon does not allow remote code; this keeps
    # transformers from running it even if something got past that.
    return spec.trust_remote_code and remote_code_allowed(os.environ)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
