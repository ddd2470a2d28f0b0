"""The job's transformers TrainingArguments: ftq's own settings, then the spec's (worker.run.trainer_args)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import TrainingArguments

from worker.preflight.confine import Roots
from worker.run.trainer_args import merge_arguments, method_arguments
from worker.run.validate import read_deepspeed
from worker.spec.job import JobSpec
from worker.spec.layout import CHECKPOINT_DIR
from worker.spec.loss_chunks import FULL_LOGITS

log = logging.getLogger("worker")

# The spec's keys that transformers takes under the same name, as they are.
AS_THEY_ARE = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "eval_strategy",
    "eval_steps",
    "seed",
    "dataloader_num_workers",
    "ddp_timeout",
)


def training_arguments(
    spec: JobSpec, run_dir: Path, cuda: bool, roots: Roots = None, loss_kernel: str = FULL_LOGITS
) -> TrainingArguments:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # transformers 5 renamed gradient_checkpointing; use whichever this version has without a warning.
    fields = TrainingArguments.__dataclass_fields__
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    ftq = dict(
        output_dir=str(run_dir / CHECKPOINT_DIR),
        **{name: getattr(spec, name) for name in AS_THEY_ARE},
        # transformers 5 has no warmup_ratio: warmup_steps below 1 is read as a ratio.
        warmup_steps=spec.warmup_ratio if spec.warmup_ratio > 0 else spec.warmup_steps,
        bf16=mixed_bf16(spec, cuda),
        fp16=cuda and spec.fp16,
        **{checkpointing: spec.gradient_checkpointing},
        save_strategy="steps",
        # Every trainable parameter takes part in each step (LoRA or full); as LLaMA-Factory sets for LoRA,
        # this spares DDP a walk of the autograd graph per step and its warning.
        ddp_find_unused_parameters=False if distributed else None,
        # The config as a dict read through the confined open, so that transformers never opens the path itself.
        deepspeed=read_deepspeed(Path(spec.deepspeed), roots) if spec.deepspeed else None,
        report_to="none",
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,  # the log is a file; progress is in metrics.jsonl
        remove_unused_columns=False,
    )
    # The spec's passed-through and method keys (worker.run.trainer_args says where they meet ftq's own).
    return TrainingArguments(**merge_arguments(ftq, method_arguments(spec, cuda, set(fields), loss_kernel)))


def mixed_bf16(spec: JobSpec, cuda: bool) -> bool:
    """Whether transformers trains in bf16 autocast (AMP), as the spec's bf16 and pure_bf16 ask; logs the choice."""
    if not cuda and (spec.bf16 or spec.fp16):
        log.info("no CUDA device: mixed precision (bf16/fp16) is skipped, training in float32")
    if spec.pure_bf16 and spec.deepspeed is None:
        # LLaMA-Factory's pure_bf16: the weights are loaded in bf16 (worker.model.load) and trained as they are,
        # so gradients and AdamW states are bf16 too; AMP would add nothing but casts.
        if spec.finetuning_type == "full":
            log.info("pure_bf16: weights, gradients and optimizer states in bfloat16, no fp32 master copy")
        else:  # peft makes its adapters float32 by itself; LLaMA-Factory leaves them so
            log.info("pure_bf16: base model in bfloat16 without autocast; peft keeps the LoRA adapters in float32")
        return False
    if spec.pure_bf16:
        # DeepSpeed's own precision mode must match the bf16 weights; it keeps its optimizer partitions in fp32.
        log.info("pure_bf16 with DeepSpeed: model loaded in bfloat16, DeepSpeed's bf16 mode on")
        return cuda
    return cuda and spec.bf16
