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

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from worker.spec.batching import BatchingFields

# The exit codes (worker.spec.exits) and the run-dir layout (worker.spec.layout) live apart (no pydantic there: the
# start gate and the benchmarks' stand-in workers need them before, or without, the slow imports); the spec
# re-exports them.
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_NOT_STARTED, EXIT_OOM
from worker.spec.key_fates import ALIASES, PARTLY_WITHOUT_EFFECT, REFUSED, SECRETS, WITHOUT_EFFECT, is_default, nearest
from worker.spec.layout import CHECKPOINT_DIR, LOG_FILE, METRICS_FILE, OUTPUT_DIR, SPEC_FILE
from worker.spec.method_keys import MethodFields
from worker.spec.methods import method_problems
from worker.spec.outputs import OutputFields, split_report_to
from worker.spec.passed import PassedToTrainer
from worker.templates.render import TEMPLATE_NAMES
from worker.templates.tools import TOOL_FORMAT_NAMES

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
OTHER_STAGES = ("pt", "rm", "ppo", "dpo", "kto")


class JobSpec(MethodFields, PassedToTrainer, BatchingFields, OutputFields):
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

    @model_validator(mode="wrap")
    @classmethod
    def _sort_keys(cls, data: Any, handler: Any) -> Any:
        """Give every key its fate (worker.spec.key_fates) and report every problem together, each naming its key."""
        if not isinstance(data, dict):
            return handler(data)
        kept, without_effect, problems = sort_keys(data, set(cls.model_fields))
        try:
            spec = handler({**kept, "without_effect": without_effect} if without_effect else kept)
            problems += [
                {"type": PydanticCustomError("combination", why), "loc": (field,), "input": data.get(field)}
                for field, why in spec.combination_problems()
            ]
        except ValidationError as exc:
            problems += [
                {"type": PydanticCustomError(e["type"], e["msg"]), "loc": e["loc"], "input": e["input"]}
                for e in exc.errors(include_url=False)
            ]
            spec = None
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return spec

    @model_validator(mode="before")
    @classmethod
    def _gpus_follow_gpu_ids(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("gpu_ids"), list) and "gpus" not in data:
            data = {**data, "gpus": len(data["gpu_ids"])}
        if isinstance(data, dict) and isinstance(data.get("oom_retry"), bool):
            data = {**data, "oom_retry": 3 if data["oom_retry"] else 0}
        # LLaMA-Factory's switch, said once as the field everything else reads (the OOM retry turns it on there).
        if isinstance(data, dict) and isinstance(data.get("disable_gradient_checkpointing"), bool):
            wanted = not data["disable_gradient_checkpointing"]
            if data.get("gradient_checkpointing", wanted) is wanted:
                data = {k: v for k, v in data.items() if k != "disable_gradient_checkpointing"}
                data["gradient_checkpointing"] = wanted
        return data

    def combination_problems(self) -> list[tuple[str, str]]:
        """(field, why) for each combination of keys that cannot work together, every one of them at once."""
        found: list[tuple[str, str]] = []
        if self.gpu_ids is not None:
            if len(set(self.gpu_ids)) != len(self.gpu_ids) or min(self.gpu_ids) < 0:
                found.append(("gpu_ids", f"gpu_ids {self.gpu_ids} must be distinct indices >= 0"))
            if self.gpus != len(self.gpu_ids):
                found.append(
                    ("gpus", f"gpus is {self.gpus} but gpu_ids names {len(self.gpu_ids)}; drop gpus or match it")
                )
        if self.pure_bf16 and self.fp16:
            found.append(("pure_bf16", "pure_bf16 and fp16 are both true; choose one"))
        if self.deepspeed is not None and self.gpus == 0:
            found.append(("deepspeed", "deepspeed needs at least one GPU; set gpus: 1 or more, or remove deepspeed"))
        if self.bf16 and self.fp16:
            found.append(("fp16", "bf16 and fp16 are both true; choose one mixed-precision mode"))
        if self.val_size >= 1 and self.val_size != int(self.val_size):
            found.append(("val_size", "val_size must be a fraction below 1 or a whole count of examples"))
        if self.eval_dataset is not None and self.val_size > 0:
            found.append(("eval_dataset", "eval_dataset and val_size are both set; evaluate on one or the other"))
        if self.eval_strategy != "no" and self.val_size == 0 and self.eval_dataset is None:
            why = f"eval_strategy is {self.eval_strategy!r} but there is no eval data; set val_size or eval_dataset"
            found.append(("eval_strategy", why))
        if self.disable_gradient_checkpointing is not None:
            why = "disable_gradient_checkpointing and gradient_checkpointing contradict each other; keep one of them"
            found.append(("disable_gradient_checkpointing", why))
        if self.interleave_probs is not None and self.mix_strategy == "concat":
            found.append(
                ("interleave_probs", "interleave_probs needs mix_strategy interleave_under or interleave_over")
            )
        if self.template is not None and self.template not in TEMPLATE_NAMES:
            why = (
                f"{self.template!r} is not a template ftq has; it has: {', '.join(TEMPLATE_NAMES)} (or leave it unset "
            )
            found.append(("template", why + "to use the tokenizer's own chat template)"))
        if self.tool_format is not None and self.tool_format not in TOOL_FORMAT_NAMES:
            found.append(
                ("tool_format", f"{self.tool_format!r} is not supported; ftq has: {', '.join(TOOL_FORMAT_NAMES)}")
            )
        fields = set(type(self).model_fields)
        found += [(_field_named(problem, fields), problem) for problem in method_problems(self)]
        return found

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


def _field_named(problem: str, fields: set[str]) -> str:
    """The key a sentence is about: its first word when that is a key ("use_dora applies to LoRA only")."""
    first = problem.split()[0].rstrip(":,") if problem.split() else ""
    return first if first in fields else "spec"


def sort_keys(data: dict[str, Any], fields: set[str]) -> tuple[dict[str, Any], dict[str, Any], list[InitErrorDetails]]:
    """(keys for the model's fields, keys accepted without effect, problems), per worker.spec.key_fates."""
    kept: dict[str, Any] = {}
    without_effect: dict[str, Any] = dict(data.get("without_effect") or {})
    problems: list[InitErrorDetails] = []

    def refuse(key: str, why: str) -> None:
        problems.append({"type": PydanticCustomError("refused", why), "loc": (key,), "input": data[key]})

    for key, value in data.items():
        if key == "without_effect":
            unknown = [k for k in without_effect if k not in WITHOUT_EFFECT and k not in PARTLY_WITHOUT_EFFECT]
            if unknown:
                refuse(key, f"holds {', '.join(map(repr, unknown[:5]))}, which are not keys ftq accepts without effect")
        elif key == "stage" and value in OTHER_STAGES:
            refuse(key, f"stage {value!r} is not run by ftq: it runs supervised fine-tuning (stage: sft) only")
        elif key == "report_to":  # tensorboard is honoured; any other integration is accepted without effect
            ours, rest = split_report_to(value)
            if ours is not None:
                kept[key] = ours
            if rest is not None:
                without_effect[key] = rest
        elif key in ALIASES:
            if ALIASES[key] in data and data[ALIASES[key]] != value:
                refuse(key, f"is transformers' new name for {ALIASES[key]}, which says otherwise; keep one of them")
            else:
                kept[ALIASES[key]] = value
        elif key in fields:
            kept[key] = value
        elif key in WITHOUT_EFFECT:
            if not is_default(key, value):
                without_effect[key] = "(hidden)" if key in SECRETS else value
        elif key in REFUSED:
            if not is_default(key, value):
                refuse(key, REFUSED[key][1])
        else:
            known = fields | set(WITHOUT_EFFECT) | set(REFUSED) | set(ALIASES)
            guess = nearest(key, known)
            hint = f"; did you mean {guess}?" if guess else "; remove it (see the README's table of keys)"
            refuse(key, f"{key!r} is not a key ftq or LLaMA-Factory knows{hint}")
    return kept, without_effect, problems


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
    "sort_keys",
]
