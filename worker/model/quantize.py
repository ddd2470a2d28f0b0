"""How a model is quantized as it loads: QLoRA with bitsandbytes, or a pre-quantized checkpoint as it is.

LLaMA-Factory's order (model_utils/quantization.py): a checkpoint that brings its
own quantization_config (GPTQ, AWQ, AQLM, …) is loaded with it and quantization_bit
is ignored; otherwise quantization_bit 4 or 8 quantizes on the fly with
bitsandbytes. FP8 and MXFP4 checkpoints are dequantized to bf16 on load, as
LLaMA-Factory trains them. worker.preflight.requirements has already refused what this
machine cannot run (packages, CUDA); this module only builds from_pretrained's
arguments.

What peft's prepare_model_for_kbit_training would add is done as LLaMA-Factory
does it instead: inputs that require grad under gradient checkpointing and the
adapters in float32 (worker.model.adapters), norms in float32 only with
upcast_layernorm (worker.model.kernels); the frozen base is not upcast as a whole.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from worker.preflight.requirements import DEQUANTIZED
from worker.spec.job import JobSpec

log = logging.getLogger(__name__)


def pre_quantized_method(config: Any) -> str | None:
    """The quant_method of a checkpoint's own quantization_config, or None for a checkpoint in plain weights."""
    quantization = getattr(config, "quantization_config", None)
    if isinstance(quantization, dict):
        return str(quantization.get("quant_method", "")).lower() or "unknown"
    if quantization is not None:  # a QuantizationConfigMixin already
        return str(getattr(quantization, "quant_method", "unknown")).lower()
    return None


def is_quantized(spec: JobSpec, config: Any) -> bool:
    """Whether the weights stay quantized in training (so: LoRA / OFT only, one adapter, no merging)."""
    method = pre_quantized_method(config)
    return method not in DEQUANTIZED if method is not None else spec.quantization_bit is not None


def bnb_config(spec: JobSpec, compute_dtype: torch.dtype) -> Any:
    """The BitsAndBytesConfig for quantization_bit, with LLaMA-Factory's settings."""
    from transformers import BitsAndBytesConfig

    if spec.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=spec.double_quantization,
        bnb_4bit_quant_type=spec.quantization_type,
        bnb_4bit_quant_storage=compute_dtype,  # what DeepSpeed ZeRO-3 shards the 4-bit weights as
    )


def quantization_kwargs(spec: JobSpec, config: Any, compute_dtype: torch.dtype, zero3: bool) -> dict[str, Any]:
    """from_pretrained's quantization_config and device_map (empty for a model in plain weights).

    A quantized model cannot be moved after loading, so it loads straight onto
    this rank's GPU, except under ZeRO-3, which places the weights itself (and
    takes 4-bit bitsandbytes only).
    """
    method = pre_quantized_method(config)
    kwargs: dict[str, Any] = {}
    if method is not None:
        if spec.quantization_bit is not None:
            log.warning("quantization_bit is ignored: the checkpoint is already %s-quantized", method)
        if zero3 and method not in DEQUANTIZED:
            raise ValueError(
                f"DeepSpeed ZeRO-3 cannot train a pre-quantized ({method}) checkpoint (as in LLaMA-Factory); "
                "use a ZeRO-0/2 config"
            )
        kwargs.update(_pre_quantized(method, config))
        log.info("loading a %s-quantized checkpoint (%s bits)", method, _bits(config))
    elif spec.quantization_bit is not None:
        if zero3 and spec.quantization_bit != 4:
            raise ValueError("DeepSpeed ZeRO-3 takes 4-bit QLoRA only (as in LLaMA-Factory): set quantization_bit: 4")
        kwargs["quantization_config"] = bnb_config(spec, compute_dtype)
        log.info("quantizing to %d bit with bitsandbytes (%s)", spec.quantization_bit, spec.quantization_type)
    else:
        return {}
    if not zero3 and torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))}
    return kwargs


def _pre_quantized(method: str, config: Any) -> dict[str, Any]:
    """LLaMA-Factory's adjustments per quant_method (configure_quantization)."""
    quantization = config.quantization_config
    if method in ("fp8", "mxfp8"):
        from transformers import FineGrainedFP8Config

        return {"quantization_config": FineGrainedFP8Config(dequantize=True), "ignore_mismatched_sizes": True}
    if method == "mxfp4":
        from transformers import Mxfp4Config

        return {"quantization_config": Mxfp4Config(dequantize=True), "ignore_mismatched_sizes": True}
    if isinstance(quantization, dict):
        if method == "gptq":
            quantization.pop("disable_exllama", None)  # a deprecated key
            quantization["use_exllama"] = False  # exllama kernels do not train
        elif method == "aqlm":
            quantization["bits"] = 2
    return {}


def _bits(config: Any) -> Any:
    quantization = config.quantization_config
    return quantization.get("bits", "?") if isinstance(quantization, dict) else getattr(quantization, "bits", "?")
