"""Keys handed to transformers' `TrainingArguments` as they are.

They change how transformers trains (the optimizer, logging, dataloaders,
DDP), not what ftq steers, so ftq passes them on unchanged. Each is typed here,
after transformers' own field, so that a bad value is a 422 at submit, naming
the key, rather than a failure in the worker minutes later. Unset (None) means
transformers' default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

INT32_MAX = 2**31 - 1

# transformers' OptimizerNames (5.x); tests/unit/test_key_fates.py checks the list against the installed version.
OPTIMIZERS = (
    "adafactor", "adagrad", "adalomo", "adamw_8bit", "adamw_anyprecision", "adamw_bnb_8bit", "adamw_torch",
    "adamw_torch_4bit", "adamw_torch_8bit", "adamw_torch_fused", "adamw_torch_npu_fused", "adamw_torch_xla",
    "ademamix", "ademamix_8bit", "apollo_adamw", "apollo_adamw_layerwise", "galore_adafactor",
    "galore_adafactor_layerwise", "galore_adamw", "galore_adamw_8bit", "galore_adamw_8bit_layerwise",
    "galore_adamw_layerwise", "grokadamw", "lion_32bit", "lion_8bit", "lomo", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop", "rmsprop_bnb", "rmsprop_bnb_32bit", "rmsprop_bnb_8bit", "schedule_free_adamw", "schedule_free_radam",
    "schedule_free_sgd", "sgd", "stable_adamw",
)  # fmt: skip
Optimizer = Literal[OPTIMIZERS]  # type: ignore[valid-type]

Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Short = Annotated[str, Field(min_length=1, max_length=4096)]
Options = Annotated[dict[str, Any], Field(max_length=256)]

# The keyword arguments each of transformers' schedulers takes in lr_scheduler_kwargs: its function's arguments but
# those transformers' get_scheduler fills itself (optimizer, num_warmup_steps, num_training_steps). constant and
# constant_with_warmup take none (get_scheduler drops the kwargs for them). Kept here because the daemon imports no
# transformers; tests/unit/test_spec_values.py checks it against the installed transformers' own signatures.
SCHEDULER_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "linear": ("last_epoch",),
    "cosine": ("num_cycles", "last_epoch"),
    "cosine_with_restarts": ("num_cycles", "last_epoch"),
    "polynomial": ("lr_end", "power", "last_epoch"),
    "constant": (),
    "constant_with_warmup": (),
    "inverse_sqrt": ("timescale", "last_epoch"),
}


def scheduler_problems(scheduler: str, kwargs: dict[str, Any] | None) -> list[str]:
    """Why lr_scheduler_kwargs cannot be given to the chosen scheduler: each key it does not take, named."""
    accepted = SCHEDULER_ARGUMENTS.get(scheduler)
    if not kwargs or accepted is None:
        return []
    unknown = [key for key in kwargs if key not in accepted]
    if not unknown:
        return []
    takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
    return [
        f"lr_scheduler_kwargs: {', '.join(map(repr, unknown[:5]))} is not an argument of the {scheduler!r} "
        f"scheduler ({takes}); remove it or choose another lr_scheduler_type"
    ]


class PassedToTrainer(BaseModel):
    """transformers' own training arguments that ftq passes on as they are."""

    # optimizer and schedule
    optim: Optimizer | None = Field(default=None, description="transformers' optimizer name, e.g. adamw_torch.")
    optim_args: Short | None = None
    optim_target_modules: Short | list[Short] | None = Field(
        default=None, description="Modules GaLore / APOLLO optimizers project (e.g. all-linear)."
    )
    adam_beta1: float | None = Field(default=None, ge=0.0, lt=1.0)
    adam_beta2: float | None = Field(default=None, ge=0.0, lt=1.0)
    adam_epsilon: float | None = Field(default=None, gt=0.0, le=1.0)
    lr_scheduler_kwargs: Options | None = None
    label_smoothing_factor: float | None = Field(default=None, ge=0.0, lt=1.0)
    neftune_noise_alpha: float | None = Field(default=None, gt=0.0, le=1e6)
    average_tokens_across_devices: bool | None = None
    # precision and compute
    tf32: bool | None = Field(default=None, description="GPU only; ignored on a CPU slot (said in the log).")
    bf16_full_eval: bool | None = None
    fp16_full_eval: bool | None = None
    gradient_checkpointing_kwargs: Options | None = None
    torch_compile: bool | None = None
    torch_compile_backend: Short | None = None
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = (
        None
    )
    liger_kernel_config: Options | None = None
    torch_empty_cache_steps: int | None = Field(default=None, ge=1, le=INT32_MAX)
    use_cache: bool | None = None
    # logging
    logging_strategy: Literal["no", "steps", "epoch"] | None = None
    logging_first_step: bool | None = None
    logging_nan_inf_filter: bool | None = None
    log_on_each_node: bool | None = None
    log_level: Literal["debug", "info", "warning", "error", "critical", "passive"] | None = None
    log_level_replica: Literal["debug", "info", "warning", "error", "critical", "passive"] | None = None
    run_name: Short | None = None
    skip_memory_metrics: bool | None = None
    debug: Literal["", "underflow_overflow"] | None = None
    # evaluation
    eval_delay: float | None = Field(default=None, ge=0.0, le=1e9)
    eval_on_start: bool | None = None
    eval_accumulation_steps: int | None = Field(default=None, ge=1, le=INT32_MAX)
    eval_do_concat_batches: bool | None = None
    eval_use_gather_object: bool | None = None
    prediction_loss_only: bool | None = None
    include_for_metrics: list[Literal["inputs", "loss"]] | None = None
    batch_eval_metrics: bool | None = None
    load_best_model_at_end: bool | None = None
    metric_for_best_model: Short | None = None
    greater_is_better: bool | None = None
    # saving
    save_strategy: Literal["no", "steps", "epoch", "best"] | None = None
    save_only_model: bool | None = None
    save_on_each_node: bool | None = None
    enable_jit_checkpoint: bool | None = None
    restore_callback_states_from_checkpoint: bool | None = None
    ignore_data_skip: bool | None = None
    # data loading and determinism
    data_seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    full_determinism: bool | None = None
    dataloader_drop_last: bool | None = None
    dataloader_pin_memory: bool | None = None
    dataloader_persistent_workers: bool | None = None
    dataloader_prefetch_factor: int | None = Field(default=None, ge=1, le=1024)
    dataloader_multiprocessing_context: Literal["fork", "spawn", "forkserver"] | None = None
    dataloader_in_order: bool | None = None
    train_sampling_strategy: Literal["random", "sequential", "group_by_length"] | None = None
    accelerator_config: Options | None = None
    # DDP
    ddp_find_unused_parameters: bool | None = None
    ddp_bucket_cap_mb: Count | None = None
    ddp_broadcast_buffers: bool | None = None
    ddp_static_graph: bool | None = None
    ddp_backend: Literal["nccl", "gloo", "mpi", "ccl", "hccl", "cncl", "mccl"] | None = None


PASSED_KEYS: tuple[str, ...] = tuple(PassedToTrainer.model_fields)


def passed_arguments(spec: BaseModel) -> dict[str, Any]:
    """The passed-through keys a spec sets, as keyword arguments for TrainingArguments."""
    return {key: getattr(spec, key) for key in PASSED_KEYS if getattr(spec, key) is not None}
