"""Which parameters train: full, freeze, or a peft adapter (LoRA and its variants, OFT), as LLaMA-Factory sets them.

LLaMA-Factory's model/adapter.py is the definition followed here: freeze's layer
and module choice (`_setup_freeze_tuning`), the adapters of adapter_name_or_path
merged or trained on (`_setup_lora_tuning`), and trainable parameters upcast to
float32 unless pure_bf16 (`init_adapter`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from worker.launch.oom import exception_is_oom
from worker.preflight.confine import BadFile, Roots, check_dir, show
from worker.preflight.modelfiles import check_model_files
from worker.spec.job import JobSpec
from worker.spec.methods import MethodError, peft_targets, pissa_init, split_names

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


class AdapterLoadError(BadFile):
    """An adapter of adapter_name_or_path cannot be used; bad input naming the directory."""


def setup_method(model: Any, spec: JobSpec, *, cast_fp32: bool, quantized: bool, zero3: bool, roots: Roots) -> Any:
    """The model with exactly the parameters of spec.finetuning_type trainable."""
    if spec.finetuning_type in ("lora", "oft"):
        return setup_peft(model, spec, cast_fp32=cast_fp32, quantized=quantized, zero3=zero3, roots=roots)
    if spec.finetuning_type == "freeze":
        trainable = setup_freeze(model, spec)
        if spec.gradient_checkpointing:
            # Reentrant checkpointing gives a block no gradient unless its input needs one: the frozen layers
            # below the trainable ones would otherwise cut the graph. (LLaMA-Factory patches the checkpointing
            # function per layer for the same end.)
            model.enable_input_require_grads()
        log.info("freeze: %d parameters train: %s", len(trainable), ", ".join(trainable))
    else:
        model.requires_grad_(True)
    if cast_fp32:
        cast_trainable_to_fp32(model)
    return model


# ---- freeze ----------------------------------------------------------------------------------------------------


def num_layers(config: Any) -> int:
    """The number of decoder layers, under the names configs give it (the text config of a composite model)."""
    config = getattr(config, "text_config", None) or config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    count = count or getattr(config, "n_layer", None)
    if not count:
        raise MethodError(f"finetuning_type freeze: {type(config).__name__} says nothing of its number of layers")
    return int(count)


def freeze_patterns(param_names: list[str], layers: int, spec: JobSpec) -> list[str]:
    """LLaMA-Factory's trainable-name fragments: ".<layer>.<module>" per trainable layer, plus the extra modules.

    freeze_trainable_layers n > 0 trains the last n layers, n < 0 the first |n|.
    A parameter trains when its name contains one of the fragments.
    """
    n = spec.freeze_trainable_layers
    layer_ids = range(max(0, layers - n), layers) if n > 0 else range(min(-n, layers))
    hidden, outside = set(), set()
    for name in param_names:
        if ".0." in name:
            hidden.add(name.split(".0.")[-1].split(".")[0])
        elif ".1." in name:
            hidden.add(name.split(".1.")[-1].split(".")[0])
        if re.search(r"\.\d+\.", name) is None:
            outside.add(name.split(".")[-2] if "." in name else name)
    patterns = []
    for module in split_names(spec.freeze_trainable_modules):
        if module != "all" and module not in hidden:
            raise MethodError(
                f"freeze_trainable_modules: {module!r} is not a module of the model's layers; "
                f"choose from {', '.join(sorted(hidden))} (or all)"
            )
        patterns += [f".{i}.{'' if module == 'all' else module}" for i in layer_ids]
    for module in split_names(spec.freeze_extra_modules):
        if module not in outside:
            raise MethodError(
                f"freeze_extra_modules: {module!r} is not a module outside the layers; "
                f"choose from {', '.join(sorted(outside))}"
            )
        patterns.append(module)
    return patterns


def setup_freeze(model: Any, spec: JobSpec) -> list[str]:
    """Freeze every parameter but those freeze_patterns picks; the names of those that train."""
    named = list(model.named_parameters())
    patterns = freeze_patterns([name for name, _ in named], num_layers(model.config), spec)
    trainable = []
    for name, param in named:
        train = any(pattern in name for pattern in patterns)
        param.requires_grad_(train)
        if train:
            trainable.append(name)
    if not trainable:
        raise MethodError(f"finetuning_type freeze: no parameter matches {', '.join(patterns) or 'any layer'}")
    return trainable


def cast_trainable_to_fp32(model: torch.nn.Module) -> None:
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


# ---- LoRA and OFT ----------------------------------------------------------------------------------------------


def peft_config(spec: JobSpec) -> Any:
    """peft's LoraConfig or OFTConfig for the spec."""
    from peft import LoraConfig, OFTConfig, TaskType

    modules_to_save = split_names(spec.additional_target) or None
    if spec.finetuning_type == "oft":
        return OFTConfig(
            r=spec.oft_rank,
            oft_block_size=spec.oft_block_size,
            target_modules=peft_targets(spec.oft_target),
            module_dropout=spec.module_dropout,
            modules_to_save=modules_to_save,
            task_type=TaskType.CAUSAL_LM,
        )
    extra = {"init_lora_weights": pissa_init(spec)} if spec.pissa_init else {}
    return LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.effective_lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=peft_targets(spec.lora_target),
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        modules_to_save=modules_to_save,
        task_type=TaskType.CAUSAL_LM,
        **extra,
    )


def setup_peft(model: Any, spec: JobSpec, *, cast_fp32: bool, quantized: bool, zero3: bool, roots: Roots) -> Any:
    """A peft model: the adapters of adapter_name_or_path merged or trained on, else a new adapter.

    All adapters but the last are merged into the base and the last trains on;
    with create_new_adapter all are merged and a new one trains. A quantized
    model or ZeRO-3 cannot merge, so they take a single adapter, trained on.
    """
    from peft import PeftModel, get_peft_model  # peft is slow to import; only adapter jobs pay for it

    if spec.pissa_init and zero3:
        raise MethodError("pissa_init cannot initialize PiSSA under DeepSpeed ZeRO-3 (as in LLaMA-Factory)")
    adapters, train_on = spec.adapter_paths, None
    if adapters:
        if quantized or zero3:
            what = "a quantized model" if quantized else "DeepSpeed ZeRO-3"
            if len(adapters) > 1:
                raise MethodError(f"adapter_name_or_path: {what} takes a single adapter; merge them first")
            if spec.create_new_adapter:
                raise MethodError(f"create_new_adapter cannot create a new adapter upon {what}")
        to_merge = adapters if spec.create_new_adapter else adapters[:-1]
        train_on = None if spec.create_new_adapter else adapters[-1]
        for path in to_merge:
            check_adapter(path, roots)
            model = _load_adapter(PeftModel, model, path, trainable=False).merge_and_unload()
        if to_merge:
            log.info("merged %d adapter(s) into the base model: %s", len(to_merge), ", ".join(to_merge))
    if spec.gradient_checkpointing:
        # The frozen embeddings' output has no grad, so checkpointed blocks would give the adapters none either.
        model.enable_input_require_grads()
    if train_on is not None:
        check_adapter(train_on, roots)
        model = _load_adapter(PeftModel, model, train_on, trainable=True)
        log.info("training on the adapter in %s", train_on)
    else:
        model = get_peft_model(model, peft_config(spec))
    if cast_fp32:
        cast_trainable_to_fp32(model)
    return model


def check_adapter(path: str, roots: Roots) -> None:
    """An adapter directory inside the input dirs, with its config and whole weights; AdapterLoadError otherwise."""
    try:
        check_dir(path, roots)
    except BadFile as exc:
        raise AdapterLoadError(path, f"adapter_name_or_path: {exc}") from None
    if not (Path(path) / ADAPTER_CONFIG).is_file():
        raise AdapterLoadError(path, f"adapter_name_or_path: {show(path)} has no {ADAPTER_CONFIG}: not a peft adapter")
    problems = check_model_files(path, roots, parse=True)
    if problems:
        raise AdapterLoadError(path, f"adapter_name_or_path: {'; '.join(problems)}")


def _load_adapter(peft_model: Any, model: Any, path: str, trainable: bool) -> Any:
    try:
        return peft_model.from_pretrained(model, path, is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # a wrong adapter: other shapes, another base
        if exception_is_oom(exc):
            raise
        cause = f"{type(exc).__name__}: {str(exc).strip()}"[:500]
        why = f"adapter_name_or_path: the adapter in {show(path)} cannot be loaded: {cause}"
        raise AdapterLoadError(path, why) from exc
