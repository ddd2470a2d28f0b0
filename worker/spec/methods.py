"""The method keys as peft and transformers take them, and the combinations they refuse.

Pure (no torch, peft or transformers at import): the spec checks the combinations
at submit (worker.spec.job calls `method_problems`), the worker builds its peft and
optimizer settings from the same functions, and the checkpoint code compares the
method a checkpoint was trained with (`describe_method`) with this job's.
"""

from __future__ import annotations

from typing import Any

from worker.spec.job_fields import JobFields

# LLaMA-Factory's flash_attn choices -> transformers' attn_implementation (None: transformers' own default).
ATTENTION: dict[str, str | None] = {
    "auto": None,
    "disabled": "eager",
    "sdpa": "sdpa",
    "fa2": "flash_attention_2",
    "fa3": "flash_attention_3",
}

# Every linear layer but the output one, as transformers' GaLore / APOLLO integration reads a regex (fullmatch on
# each module name). LLaMA-Factory's find_all_linear_modules leaves lm_head out (output_layer for ChatGLM, output
# for InternLM2); transformers' own "all-linear" would project the output layer too.
ALL_LINEAR_BUT_OUTPUT = r"(?!(?:.*\.)?(?:lm_head|output_layer|output)$).*"

# The optimizer a GaLore job runs, by the optim it names, as LLaMA-Factory picks its GaLore class
# (adamw_torch: GaLoreAdamW, the 8-bit AdamWs: GaLoreAdamW8bit, adafactor: GaLoreAdafactor).
GALORE_FOR = {
    None: "galore_adamw",
    "adamw_torch": "galore_adamw",
    "adamw_torch_fused": "galore_adamw",  # transformers' default optim on recent torch: plain AdamW still
    "adamw_8bit": "galore_adamw_8bit",
    "adamw_bnb_8bit": "galore_adamw_8bit",
    "paged_adamw_8bit": "galore_adamw_8bit",
    "adafactor": "galore_adafactor",
}
APOLLO_FOR = {None: "apollo_adamw", "adamw_torch": "apollo_adamw", "adamw_torch_fused": "apollo_adamw"}
# Optimizers that build their own parameter groups (or none): LoRA+ cannot hand them its groups.
NO_PARAM_GROUPS = ("lomo", "adalomo", "galore_", "apollo_")


class MethodError(ValueError):
    """The method keys ask for something peft or transformers cannot do; the message names the keys."""


def split_names(text: str | None) -> list[str]:
    """A comma list as LLaMA-Factory splits it."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def peft_targets(text: str) -> str | list[str]:
    """lora_target / oft_target for peft: "all" is every linear layer but the output one (peft's "all-linear")."""
    return "all-linear" if text.strip() == "all" else split_names(text)


def attn_implementation(flash_attn: str) -> str | None:
    """transformers' attn_implementation for LLaMA-Factory's flash_attn; None leaves transformers' choice."""
    return ATTENTION[flash_attn]


def pissa_init(spec: JobFields) -> str | None:
    """peft's init_lora_weights for PiSSA: exact SVD with pissa_iter -1, fast SVD with n iterations otherwise."""
    if not spec.pissa_init:
        return None
    return "pissa" if spec.pissa_iter == -1 else f"pissa_niter_{spec.pissa_iter}"


def effective_optim(spec: JobFields) -> str | None:
    """The optimizer name transformers runs: spec.optim, or the GaLore / APOLLO one use_galore / use_apollo pick."""
    if spec.use_galore:
        return _low_rank_name("galore_", GALORE_FOR, spec.optim, spec.galore_layerwise, "use_galore")
    if spec.use_apollo:
        return _low_rank_name("apollo_", APOLLO_FOR, spec.optim, spec.apollo_layerwise, "use_apollo")
    return spec.optim


def _low_rank_name(prefix: str, table: dict[str | None, str], optim: str | None, layerwise: bool, key: str) -> str:
    """A GaLore / APOLLO optim named outright is kept; another is mapped, as LLaMA-Factory maps it."""
    if optim is not None and optim.startswith(prefix):
        base, layerwise = optim.removesuffix("_layerwise"), layerwise or optim.endswith("_layerwise")
    elif optim in table:
        base = table[optim]
    else:
        names = ", ".join(name for name in table if name)
        raise MethodError(f"{key} runs with optim {names} (as in LLaMA-Factory), not {optim}; change or remove optim")
    return base + ("_layerwise" if layerwise else "")


# optim_args transformers reads for GaLore / APOLLO, in its order, each from the spec's <galore|apollo>_<arg> key
# (LLaMA-Factory's name, where it differs: _SPEC_NAME).
_LOW_RANK_ARGS = {
    "galore": ("rank", "update_proj_gap", "scale", "proj_type"),
    "apollo": ("rank", "proj", "scale_type", "update_proj_gap", "scale", "proj_type"),
}
_SPEC_NAME = {"update_proj_gap": "update_interval"}


def low_rank_optimizer(spec: JobFields) -> dict[str, Any]:
    """optim, optim_target_modules and optim_args for use_galore / use_apollo, as transformers' integration takes them.

    transformers reads rank, update_proj_gap, scale and proj_type (APOLLO: also
    proj and scale_type) from optim_args and projects the target modules' weights;
    the other parameters train with the same optimizer unprojected, as in LLaMA-Factory.
    """
    if not (spec.use_galore or spec.use_apollo):
        return {}
    key = "galore" if spec.use_galore else "apollo"
    target: str = getattr(spec, f"{key}_target")
    options = {arg: getattr(spec, f"{key}_{_SPEC_NAME.get(arg, arg)}") for arg in _LOW_RANK_ARGS[key]}
    return {
        "optim": effective_optim(spec),
        "optim_target_modules": ALL_LINEAR_BUT_OUTPUT if target.strip() == "all" else split_names(target),
        "optim_args": ",".join(f"{arg}={value}" for arg, value in options.items()),
    }


def method_problems(spec: JobFields) -> list[str]:
    """Combinations of method keys that LLaMA-Factory (its hparams/parser.py and finetuning_args.py, in its
    words), peft or transformers refuse, found before anything loads: every group's, in this order."""
    return [
        *_adapter_problems(spec),
        *_quantization_problems(spec),
        *_low_rank_conflicts(spec),
        *_trainable_problems(spec),
        *_low_rank_settings(spec),
        *_optimizer_problems(spec),
    ]


def _adapter_problems(spec: JobFields) -> list[str]:
    """LoRA's own keys on another method, and adapters where none can go."""
    problems: list[str] = []
    if spec.finetuning_type != "lora":
        lora_only = {
            "loraplus_lr_ratio": spec.loraplus_lr_ratio is not None,
            "use_rslora": spec.use_rslora,
            "use_dora": spec.use_dora,
            "pissa_init": spec.pissa_init,
        }
        problems += [
            f"{key} applies to LoRA only; set finetuning_type: lora or remove it"
            for key, used in lora_only.items()
            if used
        ]
    if spec.pissa_convert and not spec.pissa_init:
        problems.append("pissa_convert converts a PiSSA adapter; set pissa_init: true too, or remove it")
    if spec.adapter_paths and spec.finetuning_type != "lora":
        problems.append("adapter_name_or_path: an adapter is only valid for finetuning_type: lora")
    return problems


def _quantization_problems(spec: JobFields) -> list[str]:
    """What quantizing on the fly (QLoRA) cannot go with."""
    problems: list[str] = []
    if spec.quantization_bit is None:
        if spec.quantization_method != "bnb":
            problems.append(
                f"quantization_method: {spec.quantization_method} without quantization_bit does nothing; "
                "remove it (a pre-quantized checkpoint brings its own quantization_config)"
            )
        return problems
    if spec.quantization_method != "bnb":
        problems.append(
            f"quantization_method: {spec.quantization_method} is not run by ftq; ftq quantizes on the fly "
            "with bitsandbytes (bnb). A GPTQ / AWQ / AQLM model is trained from its own pre-quantized "
            "checkpoint: remove quantization_bit and point model_name_or_path at it"
        )
    if spec.finetuning_type not in ("lora", "oft"):
        problems.append("quantization_bit: quantization works with finetuning_type lora or oft only")
    if spec.pissa_init:
        problems.append("pissa_init cannot initialize PiSSA on a quantized model (LLaMA-Factory's rule)")
    if spec.adapter_paths and spec.create_new_adapter:
        problems.append("create_new_adapter cannot create a new adapter upon a quantized model")
    if len(spec.adapter_paths) > 1:
        problems.append("adapter_name_or_path: a quantized model takes a single adapter; merge them first")
    return problems


def _low_rank_conflicts(spec: JobFields) -> list[str]:
    """GaLore / APOLLO with what they cannot train beside."""
    problems: list[str] = []
    if spec.finetuning_type == "lora" and (spec.use_galore or spec.use_apollo):
        problems.append("use_galore / use_apollo cannot train LoRA; use finetuning_type full or freeze")
    if spec.use_galore and spec.use_apollo:
        problems.append("use_galore and use_apollo are both true; choose one")
    if (spec.use_galore or spec.use_apollo) and spec.deepspeed is not None:
        problems.append("use_galore / use_apollo are incompatible with DeepSpeed (as in LLaMA-Factory)")
    return problems


def _trainable_problems(spec: JobFields) -> list[str]:
    """Settings under which peft cannot build the method, or nothing would train."""
    problems: list[str] = []
    if spec.finetuning_type == "oft" and (spec.oft_rank == 0) == (spec.oft_block_size == 0):
        state = "both 0" if spec.oft_rank == 0 else f"both set ({spec.oft_rank} and {spec.oft_block_size})"
        problems.append(
            f"oft_rank and oft_block_size are {state}; peft's OFT takes exactly one of them "
            "(r x block size = the layer's width): set oft_block_size (e.g. 32) and oft_rank: 0, or oft_rank and "
            "oft_block_size: 0"
        )
    if spec.additional_target and spec.finetuning_type not in ("lora", "oft"):
        problems.append(
            f"additional_target applies to LoRA and OFT (peft's modules_to_save); with finetuning_type "
            f"{spec.finetuning_type} use freeze_extra_modules, or remove it"
        )
    if spec.finetuning_type == "freeze" and spec.freeze_trainable_layers == 0 and not spec.freeze_extra_modules:
        problems.append("freeze_trainable_layers is 0 and freeze_extra_modules is unset: nothing would train")
    return problems


def _low_rank_settings(spec: JobFields) -> list[str]:
    """GaLore's / APOLLO's own settings: its optim, the keys it sets itself, layerwise stepping."""
    problems: list[str] = []
    if spec.use_galore or spec.use_apollo:
        key = "galore" if spec.use_galore else "apollo"
        try:
            effective_optim(spec)
        except MethodError as exc:
            problems.append(str(exc))
        if spec.optim_target_modules is not None or spec.optim_args is not None:
            problems.append(
                f"use_{key} sets optim_target_modules and optim_args from the {key}_* keys; remove "
                f"optim_target_modules and optim_args, or remove use_{key} and name the optim yourself"
            )
        if (_optim_or_none(spec) or "").endswith("_layerwise"):
            if spec.gradient_accumulation_steps != 1:
                problems.append(
                    f"{key}_layerwise steps each layer as its gradient arrives, so it cannot accumulate gradients "
                    "(as in LLaMA-Factory and transformers): set gradient_accumulation_steps: 1"
                )
            if spec.gpus > 1:
                problems.append(f"{key}_layerwise does not run under DDP (several GPUs): set {key}_layerwise: false")
    if spec.use_apollo and spec.apollo_scale_front:
        problems.append(
            "apollo_scale_front: transformers' APOLLO integration does not pass it to the optimizer; remove the key"
        )
    return problems


def _optimizer_problems(spec: JobFields) -> list[str]:
    """Sampling and optimizer keys that contradict one another."""
    problems: list[str] = []
    if spec.disable_shuffling and spec.train_sampling_strategy not in (None, "sequential"):
        problems.append(
            f"disable_shuffling asks for sequential sampling but train_sampling_strategy is "
            f"{spec.train_sampling_strategy!r}; keep one of them"
        )
    if spec.loraplus_lr_ratio is not None and spec.optim is not None and spec.optim.startswith(NO_PARAM_GROUPS):
        problems.append(f"loraplus_lr_ratio builds its own parameter groups, which optim {spec.optim} cannot take")
    return problems


def describe_method(spec: JobFields) -> str:
    """What decides the trainable parameters and their optimizer state, as one comparable line.

    ftq_checkpoint.json records it, so that a checkpoint trained another way (a
    freeze checkpoint for a full job, other layers, another adapter) is passed over
    with a reason rather than failing halfway through its load.
    """
    parts: list[str] = [spec.finetuning_type]
    if spec.finetuning_type == "lora":
        parts += [f"r={spec.lora_rank}", f"target={spec.lora_target}"]
        parts += [name for name in ("use_dora", "use_rslora") if getattr(spec, name)]
    elif spec.finetuning_type == "oft":
        parts += [f"r={spec.oft_rank}", f"block={spec.oft_block_size}", f"target={spec.oft_target}"]
    elif spec.finetuning_type == "freeze":
        parts += [f"layers={spec.freeze_trainable_layers}", f"modules={spec.freeze_trainable_modules}"]
        parts += [f"extra={spec.freeze_extra_modules}"] if spec.freeze_extra_modules else []
    if spec.finetuning_type in ("lora", "oft"):
        parts += [f"additional={spec.additional_target}"] if spec.additional_target else []
        parts += [f"adapters={spec.adapter_name_or_path}"] if spec.adapter_name_or_path else []
        parts += ["new_adapter"] if spec.create_new_adapter and spec.adapter_name_or_path else []
        parts += [f"{spec.quantization_bit}bit"] if spec.quantization_bit else []
    if spec.loraplus_lr_ratio is not None:
        parts.append("loraplus")
    optim = _optim_or_none(spec)
    parts += [f"optim={optim}"] if optim else []
    return " ".join(parts)


def _optim_or_none(spec: JobFields) -> str | None:
    try:
        return effective_optim(spec)
    except MethodError:
        return spec.optim


def expected_adapter(spec: JobFields, trained_on: dict[str, Any] | None) -> tuple[int, tuple[tuple[str, Any], ...]]:
    """(lora_rank, other adapter_config.json values) a resumable checkpoint's adapter must have.

    When the job trains on an existing adapter (the last of adapter_name_or_path,
    without create_new_adapter), that adapter's own rank and DoRA setting hold, not
    lora_rank and use_dora: LLaMA-Factory loads it as it is.
    """
    if spec.finetuning_type == "oft":
        return spec.lora_rank, (("r", spec.oft_rank), ("oft_block_size", spec.oft_block_size))
    if trained_on is not None and not spec.create_new_adapter:
        rank = trained_on.get("r")
        return (rank if isinstance(rank, int) else spec.lora_rank), (("use_dora", bool(trained_on.get("use_dora"))),)
    return spec.lora_rank, (("use_dora", spec.use_dora),)
