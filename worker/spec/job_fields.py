"""The job spec's fields, each bounded where it enters; worker.spec.job.JobSpec adds the checks across them.

Apart from the checks so that the rules over several fields (worker.spec.methods) can
name the type they read without importing the spec that calls them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from worker.spec.batching import BatchingFields
from worker.spec.method_keys import MethodFields
from worker.spec.outputs import OutputFields
from worker.spec.passed import SCHEDULER_ARGUMENTS, PassedToTrainer

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

# LLaMA-Factory's stages besides sft, each refused with the same sentence.


class JobFields(MethodFields, PassedToTrainer, BatchingFields, OutputFields):
    """What to fine-tune, on what, how, and with how many GPUs: the fields, each with its own bounds."""

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
    node_retry: int = Field(
        default=3,
        ge=0,
        le=10,
        description="On a Ray cluster: automatic retries after the job's node left the cluster mid-run; each "
        "resumes from the last checkpoint on other GPUs.",
    )
    gpu_ids: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Pin the job to these GPUs (PCI-ordered indices, as nvidia-smi numbers them); gpus follows.",
    )

    # --- model ---
    model_name_or_path: PathText = Field(description="Local directory of a transformers model.")
    adapter_name_or_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=16_384,
        description="Local adapter directories, comma-separated: all but the last are merged into the model and "
        "the last trains on (a new adapter over all of them with create_new_adapter).",
    )
    trust_remote_code: bool = False

    # --- method ---
    stage: Literal["sft"] = "sft"
    do_train: Literal[True] = True
    finetuning_type: Literal["lora", "oft", "freeze", "full"] = "lora"
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
    eval_dataset: str | None = Field(
        default=None, min_length=1, max_length=4096, description="Datasets to evaluate on (not with val_size)."
    )
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="A LLaMA-Factory template name (qwen, llama3 …); unset: the tokenizer's own chat template.",
    )
    default_system: str | None = Field(default=None, max_length=65_536)
    tool_format: str | None = Field(default=None, min_length=1, max_length=100)
    enable_thinking: bool | None = True
    cutoff_len: int = Field(default=2048, ge=8, le=1_048_576)
    train_on_prompt: bool = False
    mask_history: bool = False
    max_samples: int | None = Field(default=None, ge=1, le=INT32_MAX)
    val_size: float = Field(
        default=0.0, ge=0.0, le=10_000_000, description="A fraction (< 1) or a count (>= 1) held out for eval."
    )
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = "concat"
    interleave_probs: str | None = Field(default=None, min_length=1, max_length=4096)
    tokenized_path: PathText | None = Field(
        default=None, description="Where the tokenized set is saved, and reused by the next job that names it."
    )
    preprocessing_batch_size: int = Field(default=1000, ge=1, le=1_000_000)
    preprocessing_num_workers: int | None = Field(default=None, ge=1, le=1024)

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
    lr_scheduler_type: Literal[tuple(SCHEDULER_ARGUMENTS)] = "cosine"  # type: ignore[valid-type]
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
    ddp_timeout: int = Field(default=1800, ge=1, le=INT32_MAX, description="Seconds.")
    do_eval: bool = Field(default=False, description="Evaluate once more after training (with eval data).")
    output_dir: PathText | None = Field(
        default=None,
        description="Where the final adapter or model is also written, inside the daemon's FTQ_OUTPUT_DIRS.",
    )
    overwrite_output_dir: bool = False
    without_effect: dict[str, Any] = Field(
        default_factory=dict,
        description="Keys accepted without effect, with their values; the job's notes say why (set by ftq).",
    )

    @property
    def dataset_names(self) -> list[str]:
        """The `dataset` field split the way LLaMA-Factory splits it."""
        return [name.strip() for name in self.dataset.split(",") if name.strip()]

    @property
    def eval_dataset_names(self) -> list[str]:
        return [name.strip() for name in (self.eval_dataset or "").split(",") if name.strip()]

    @property
    def adapter_paths(self) -> list[str]:
        return [path.strip() for path in (self.adapter_name_or_path or "").split(",") if path.strip()]

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    @property
    def liger(self) -> bool:
        return self.enable_liger_kernel or self.use_liger_kernel
