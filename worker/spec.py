"""The job spec: the one contract between the daemon and a worker.

Field names are LLaMA-Factory's training-YAML keys wherever it has one, so a file
written for `llamafactory-cli train` can be submitted as it is. ftq's own fields
(`name`, `gpus`, `priority`) sit beside them. A key nobody knows is an error that
names it; a key LLaMA-Factory knows but ftq does not run yet is an error that
says so, never silently dropped.

This module is pure (pydantic only): the server validates with it, the worker
reads `RUN_DIR/spec.json` with it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

# The run-dir layout and the exit codes live in worker.layout (no pydantic there: the start gate and the
# benchmarks' stand-in workers need them before, or without, the slow imports); the spec re-exports them.
from worker.layout import (
    CHECKPOINT_DIR,
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_NOT_STARTED,
    EXIT_OOM,
    LOG_FILE,
    METRICS_FILE,
    OUTPUT_DIR,
    SPEC_FILE,
)

# Every number is bounded where it enters, to what its column holds and what training can mean: counts of steps
# and samples fit a 32-bit integer (far beyond any real run, and well inside SQLite's 64-bit INTEGER, so nothing
# the worker later reports from them can overflow a column); the seed is what numpy accepts (0 .. 2**32 - 1).
INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1
PATH_MAX = 4096  # Linux's PATH_MAX: a longer path cannot be opened anyway


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL byte, which no file name can hold; remove it")
    return value


# A path as a spec names it: bounded, and without the NUL byte that every system call would refuse.
PathText = Annotated[str, Field(min_length=1, max_length=PATH_MAX), AfterValidator(_no_nul)]

# LLaMA-Factory keys that ftq recognises but cannot honour yet: each maps to the
# sentence a person needs to fix the spec.
NOT_SUPPORTED_YET: dict[str, str] = {
    "quantization_bit": "QLoRA is not supported by this ftq yet; remove the key to train in 16/32-bit",
    "quantization_method": "quantization is not supported by this ftq yet; remove the key",
    "adapter_name_or_path": "starting from an existing adapter is not supported by this ftq yet; remove the key",
    "resume_from_checkpoint": "ftq resumes by itself on requeue; remove the key",
    "packing": "sequence packing is not supported by this ftq yet; remove the key",
    "neat_packing": "sequence packing is not supported by this ftq yet; remove the key",
    "eval_dataset": "a separate eval_dataset is not supported by this ftq yet; use val_size",
    "train_on_prompt": "train_on_prompt is not supported by this ftq yet; ftq trains on assistant turns only",
}

# Keys that only steer LLaMA-Factory's own bookkeeping. ftq owns the output
# location (RUN_DIR/output) and keeps no preprocessing cache, so these are
# accepted for compatibility and recorded with the job, but change nothing.
RECORDED_ONLY = (
    "output_dir",
    "overwrite_output_dir",
    "overwrite_cache",
    "plot_loss",
    "preprocessing_num_workers",
    "template",
)


class JobSpec(BaseModel):
    """What to fine-tune, on what, how, and with how many GPUs."""

    # allow_inf_nan: Infinity and NaN (which JSON parsers accept) are refused: no field means anything with them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # --- ftq's own fields ---
    name: str = Field(
        default="job",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="A short label shown in tables: letters, digits, '.', '_' and '-'.",
    )
    gpus: int = Field(default=1, ge=0, le=64, description="GPUs the job needs; 0 runs it on a CPU slot.")
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first; ties go by submit order.")
    oom_retry: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Automatic retries after CUDA out-of-memory (true = 3, false = 0): halve the micro-batch "
        "and double accumulation, then gradient checkpointing, then halve again.",
    )
    gpu_ids: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Pin the job to these GPUs (PCI-ordered indices, as nvidia-smi numbers them); gpus follows.",
    )

    # --- model ---
    model_name_or_path: PathText = Field(description="Local directory of a transformers model.")
    trust_remote_code: bool = False

    # --- method ---
    stage: Literal["sft"] = "sft"
    do_train: Literal[True] = True
    finetuning_type: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(default=8, ge=1, le=1024)
    lora_alpha: int | None = Field(
        default=None, ge=1, le=65_536, description="Defaults to 2 x lora_rank, as in LLaMA-Factory."
    )
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_target: str = Field(
        default="all", min_length=1, max_length=4096, description="'all' or a comma list of module names."
    )

    # --- data ---
    dataset: str = Field(
        min_length=1, max_length=4096, description="Comma-separated names from dataset_dir/dataset_info.json."
    )
    dataset_dir: PathText = "data"
    cutoff_len: int = Field(default=2048, ge=8, le=1_048_576)
    max_samples: int | None = Field(default=None, ge=1, le=INT32_MAX)
    val_size: float = Field(
        default=0.0, ge=0.0, le=10_000_000, description="A fraction (< 1) or a count (>= 1) held out for eval."
    )

    # --- training (transformers' own argument names) ---
    per_device_train_batch_size: int = Field(default=1, ge=1, le=4096)
    per_device_eval_batch_size: int = Field(default=1, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096)
    learning_rate: float = Field(default=5e-5, gt=0.0, le=1.0)
    # AdamW shrinks each weight by learning_rate x weight_decay per step: above 1 it would flip every sign.
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1e6, description="0 turns clipping off.")
    num_train_epochs: float = Field(default=3.0, gt=0.0, le=100_000)
    max_steps: int = Field(
        default=-1,
        ge=-1,
        le=INT32_MAX,
        description="-1: run num_train_epochs; otherwise exactly this many optimizer steps.",
    )
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    warmup_steps: int = Field(default=0, ge=0, le=INT32_MAX)
    bf16: bool = False
    fp16: bool = False
    pure_bf16: bool = Field(
        default=False, description="Weights, gradients and optimizer states all in bf16 (no fp32 master copy)."
    )
    deepspeed: PathText | None = Field(
        default=None, description="A DeepSpeed JSON config, e.g. configs/deepspeed/ds_z3_config.json."
    )
    gradient_checkpointing: bool = False
    logging_steps: int = Field(default=10, ge=1, le=INT32_MAX)
    save_steps: int = Field(default=500, ge=1, le=INT32_MAX)
    save_total_limit: int | None = Field(default=3, ge=1, le=10_000)
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: int | None = Field(default=None, ge=1, le=INT32_MAX)
    seed: int = Field(default=42, ge=0, le=SEED_MAX)
    dataloader_num_workers: int = Field(default=0, ge=0, le=64)
    report_to: Literal["none"] | list[Literal["none"]] = "none"
    ddp_timeout: int = Field(default=1800, ge=1, le=INT32_MAX, description="Seconds.")

    # --- accepted for compatibility; see RECORDED_ONLY ---
    output_dir: PathText | None = None
    overwrite_output_dir: bool | None = None
    overwrite_cache: bool | None = None
    plot_loss: bool | None = None
    preprocessing_num_workers: int | None = Field(default=None, ge=1, le=1024)
    template: str | None = Field(
        default=None, max_length=100, description="Recorded; ftq renders turns with the tokenizer's own chat template."
    )

    @model_validator(mode="wrap")
    @classmethod
    def _report_everything(cls, data: Any, handler: Any) -> Any:
        """Not-supported keys are reported together with every other problem, not instead of them."""
        if not isinstance(data, dict) or not any(key in NOT_SUPPORTED_YET for key in data):
            return handler(data)
        problems: list[InitErrorDetails] = [
            {"type": PydanticCustomError("not_supported", NOT_SUPPORTED_YET[key]), "loc": (key,), "input": value}
            for key, value in data.items()
            if key in NOT_SUPPORTED_YET
        ]
        try:
            handler({k: v for k, v in data.items() if k not in NOT_SUPPORTED_YET})
        except ValidationError as exc:
            problems += [
                {"type": PydanticCustomError(e["type"], e["msg"]), "loc": e["loc"], "input": e["input"]}
                for e in exc.errors(include_url=False)
            ]
        raise ValidationError.from_exception_data(cls.__name__, problems)

    @model_validator(mode="before")
    @classmethod
    def _gpus_follow_gpu_ids(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("gpu_ids"), list) and "gpus" not in data:
            data = {**data, "gpus": len(data["gpu_ids"])}
        if isinstance(data, dict) and isinstance(data.get("oom_retry"), bool):
            data = {**data, "oom_retry": 3 if data["oom_retry"] else 0}
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> JobSpec:
        if self.gpu_ids is not None:
            if len(set(self.gpu_ids)) != len(self.gpu_ids) or min(self.gpu_ids) < 0:
                raise ValueError(f"gpu_ids {self.gpu_ids} must be distinct indices >= 0")
            if self.gpus != len(self.gpu_ids):
                raise ValueError(f"gpus is {self.gpus} but gpu_ids names {len(self.gpu_ids)}; drop gpus or match it")
        if self.pure_bf16 and self.fp16:
            raise ValueError("pure_bf16 and fp16 are both true; choose one")
        if self.deepspeed is not None and self.gpus == 0:
            raise ValueError("deepspeed needs at least one GPU; set gpus: 1 or more, or remove deepspeed")
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both true; choose one mixed-precision mode")
        if self.eval_strategy != "no" and self.val_size == 0:
            raise ValueError(f"eval_strategy is {self.eval_strategy!r} but val_size is 0; set val_size (e.g. 0.1)")
        if self.val_size >= 1 and self.val_size != int(self.val_size):
            raise ValueError("val_size must be a fraction below 1 or a whole count of examples")
        return self

    @property
    def dataset_names(self) -> list[str]:
        """The `dataset` field split the way LLaMA-Factory splits it."""
        return [name.strip() for name in self.dataset.split(",") if name.strip()]

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank


__all__ = [
    "CHECKPOINT_DIR",
    "EXIT_BAD_INPUT",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_NOT_STARTED",
    "EXIT_OOM",
    "LOG_FILE",
    "METRICS_FILE",
    "OUTPUT_DIR",
    "SPEC_FILE",
    "JobSpec",
]
