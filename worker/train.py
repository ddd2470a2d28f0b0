"""The fine-tuning recipe a worker runs: validate, set up, train, save, report.

Read it top to bottom like torchtune's LoRA recipe: everything that can be
checked before loading a model is checked first and reported at once; the run
always ends with one `end` record in metrics.jsonl and an exit code from
worker.spec, so the daemon never has to parse the log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from worker.data import DataError, build_datasets, resolve_datasets
from worker.model import load_model, load_tokenizer
from worker.ranks import rank_report_path, write_rank_report
from worker.records import make_record
from worker.sink import GIB, MetricsCallback, MetricsSink, NullSink, hms, utc_timestamp
from worker.spec import (
    CHECKPOINT_DIR,
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OOM,
    METRICS_FILE,
    OUTPUT_DIR,
    SPEC_FILE,
    JobSpec,
)

log = logging.getLogger("worker")

INSTALL_DEEPSPEED = "pip install 'ftq[deepspeed]'"


class Cancelled(Exception):
    """Raised by the SIGTERM handler while there is no training step to stop at."""


class CancelFlag:
    """SIGTERM handler: stop at the next step while training, at once otherwise."""

    def __init__(self, requested: bool = False) -> None:
        self.requested = requested
        self.training = False

    def __call__(self, signum: int, frame: Any) -> None:
        already = self.requested
        self.requested = True
        # Raising inside a training step could leave CUDA state half-done; a flag is checked after each
        # step. Before training (loading the model) nothing is worth finishing; a second SIGTERM insists.
        if not self.training or already:
            raise Cancelled()


def main(argv: list[str], cancelled_early: bool = False) -> int:
    """Run the job in RUN_DIR; returns the exit code."""
    if len(argv) != 1:
        print("usage: python -m worker RUN_DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = Path(argv[0])
    if not run_dir.is_dir():
        print(f"worker: run dir {run_dir} does not exist", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hf_logging.disable_progress_bar()  # the log is a file: progress bars only add noise to it
    cancel = CancelFlag()
    signal.signal(signal.SIGTERM, cancel)
    cancel.requested = cancel.requested or cancelled_early
    return run(run_dir, cancel)


def run(run_dir: Path, cancel: CancelFlag) -> int:
    started = time.monotonic()
    # Under torchrun (worker.launch) every rank runs this recipe; rank 0 alone writes metrics.jsonl.
    rank = int(os.environ.get("RANK", "0"))
    report_path = rank_report_path(os.environ)
    sink = MetricsSink(run_dir / METRICS_FILE) if rank == 0 else NullSink()
    cuda = torch.cuda.is_available()
    trainer: Trainer | None = None

    def end(status: str, code: int, **fields: Any) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the end record must not be cut in half
        state = trainer.state if trainer is not None else None
        record = make_record(
            "end",
            dict(
                status=status,
                current_steps=state.global_step if state else 0,
                total_steps=state.max_steps if state and state.max_steps else None,
                elapsed_time=hms(time.monotonic() - started),
                peak_vram_reserved=round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
                **fields,
            ),
        )
        if report_path is not None:
            # The launcher writes the run's one end record from every rank's report: a rank that torchrun
            # stopped because another failed cannot tell that from a cancel, and rank 0 alone cannot say
            # that rank 1 ran out of memory.
            write_rank_report(report_path, {**record, "rank": rank, "exit_code": code})
        else:
            sink.write_record(record)
        sink.close()
        return code

    try:
        if cancel.requested:
            raise Cancelled()
        # 1. validate everything that can be checked without loading a model
        spec, problems = read_and_validate(run_dir)
        if spec is None or problems:
            for problem in problems:
                log.error("bad input: %s", problem)
            return end("failed", EXIT_BAD_INPUT, error="; ".join(problems))
        sink.write_record(  # written as it is: cuda_visible_devices is meaningful as null (rank 0 only)
            {
                "kind": "start",
                "timestamp": utc_timestamp(),
                "current_steps": 0,
                "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device": describe_device(cuda),
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            }
        )

        # 2. set up: seed, arguments (under torchrun they join the process group, and DeepSpeed ZeRO-3 must
        # know of its config before the model is loaded, to load it partitioned), tokenizer, data, model
        set_seed(spec.seed)
        args = training_arguments(spec, run_dir, cuda)
        tokenizer = load_tokenizer(spec)
        train_set, eval_set, collator = build_datasets(spec, tokenizer)
        model = load_model(spec, cuda)
        callback = MetricsCallback(sink, run_dir, should_stop=stop_check(cancel, args), cuda=cuda)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[callback],
        )

        # 3. train, resuming from this run dir's last checkpoint when a requeue left one
        resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if resume:
            log.info("resuming from %s", resume)
        cancel.training = True
        result = trainer.train(resume_from_checkpoint=resume)
        cancel.training = False
        if cancel.requested:
            raise Cancelled()

        # 4. save the adapter (LoRA) or the whole model (full), with the tokenizer beside it. Every rank
        # calls save_model (ZeRO-3 gathers the weights from all of them); the main process writes.
        output = run_dir / OUTPUT_DIR
        trainer.save_model(str(output))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(output))
            log.info("saved %s to %s", "adapter" if spec.finetuning_type == "lora" else "model", output)
        return end("succeeded", 0, output=OUTPUT_DIR, final_loss=_final_loss(result, callback))
    except BaseException as exc:  # every way out must leave an end record
        return _classify(exc, cancel, end)


def _classify(exc: BaseException, cancel: CancelFlag, end: Any) -> int:
    """Map an exception to the end record and exit code the supervisor expects."""
    if isinstance(exc, Cancelled) or cancel.requested:
        # A DataLoader worker killed by the same SIGTERM surfaces as its own error: still a cancel.
        log.info("cancelled by SIGTERM")
        return end("cancelled", EXIT_CANCELLED, error="cancelled (SIGTERM)")
    error = f"{type(exc).__name__}: {str(exc).strip()}"[:2000]
    if isinstance(exc, DataError):
        log.error("bad input: %s", exc)
        return end("failed", EXIT_BAD_INPUT, error=error)
    log.error("training failed", exc_info=exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc)):
        return end("oom", EXIT_OOM, error=error)
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: record, then let it go on
        end("failed", EXIT_FAILED, error=error or type(exc).__name__)
        raise exc
    return end("failed", EXIT_FAILED, error=error)


def read_and_validate(run_dir: Path) -> tuple[JobSpec | None, list[str]]:
    """The spec and every problem found in it, its model directory and its datasets."""
    path = run_dir / SPEC_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{path} does not exist"]
    except json.JSONDecodeError as exc:
        return None, [f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"]
    if not isinstance(raw, dict):
        return None, [f"{path} must hold a JSON object"]
    problems: list[str] = []
    spec = None
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "spec"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    # The paths are checked from the raw dict so that a bad field elsewhere does not hide a missing model.
    if isinstance(raw.get("model_name_or_path"), str):
        problems += check_model_dir(Path(raw["model_name_or_path"]))
    if isinstance(raw.get("dataset"), str):
        names = [name.strip() for name in raw["dataset"].split(",") if name.strip()]
        try:
            resolve_datasets(names, raw.get("dataset_dir") or "data")
        except DataError as exc:
            problems.append(str(exc))
    if isinstance(raw.get("deepspeed"), str) and raw["deepspeed"]:
        problems += check_deepspeed(Path(raw["deepspeed"]), pure_bf16=raw.get("pure_bf16") is True)
    return spec, problems


def check_model_dir(path: Path) -> list[str]:
    if not path.is_dir():
        return [f"model_name_or_path: {path} is not a directory (ftq loads local models only)"]
    problems = []
    if not (path / "config.json").is_file():
        problems.append(f"model_name_or_path: {path} has no config.json")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        problems.append(f"model_name_or_path: {path} has no weights (*.safetensors or pytorch_model*.bin)")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / name).is_file() for name in tokenizer_files):
        problems.append(f"model_name_or_path: {path} has no tokenizer files")
    return problems


def check_deepspeed(path: Path, pure_bf16: bool) -> list[str]:
    """The DeepSpeed config is a JSON object, fits the spec, and DeepSpeed itself can be imported."""
    problems = []
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"deepspeed: {path} does not exist")
    except OSError as exc:
        problems.append(f"deepspeed: {path} cannot be read ({exc.strerror})")
    except json.JSONDecodeError as exc:
        problems.append(f"deepspeed: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}")
    else:
        if not isinstance(config, dict):
            problems.append(f"deepspeed: {path} must hold a JSON object (a DeepSpeed config)")
        elif pure_bf16 and _zero_stage(config) == 3:
            problems.append(
                "pure_bf16 is incompatible with DeepSpeed ZeRO-3 (as in LLaMA-Factory); "
                "use a ZeRO-0/2 config or drop pure_bf16"
            )
    try:
        import deepspeed  # noqa: F401 - the optional extra; transformers imports it again when it needs it
    except ImportError as exc:
        problems.append(
            f"deepspeed: the spec names a DeepSpeed config but DeepSpeed is not installed ({exc}); "
            f"install the extra with {INSTALL_DEEPSPEED}"
        )
    except Exception as exc:  # a broken install fails in many ways (CUDA toolkit, ops): say so now
        problems.append(
            f"deepspeed: importing DeepSpeed failed ({type(exc).__name__}: {exc}); "
            f"reinstall it with {INSTALL_DEEPSPEED}"
        )
    return problems


def _zero_stage(config: dict[str, Any]) -> Any:
    zero = config.get("zero_optimization")
    return zero.get("stage") if isinstance(zero, dict) else None


def stop_check(cancel: CancelFlag, args: TrainingArguments) -> Any:
    """The callback's should_stop: this process's cancel flag, agreed on by every rank.

    Ranks get torchrun's SIGTERM a moment apart; if one left the loop a step
    before the others, they would wait in a collective for it for good. So at
    every step end all ranks all-reduce their flags (one number) and stop
    together; a rank told to stop by another takes it as its own cancel.
    """
    if args.world_size <= 1 or not torch.distributed.is_initialized():
        return lambda: cancel.requested

    def agreed() -> bool:
        flag = torch.tensor([1.0 if cancel.requested else 0.0], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            cancel.requested = True
        return cancel.requested

    return agreed


def training_arguments(spec: JobSpec, run_dir: Path, cuda: bool) -> TrainingArguments:
    if not cuda and (spec.bf16 or spec.fp16):
        log.info("no CUDA device: mixed precision (bf16/fp16) is skipped, training in float32")
    if spec.pure_bf16 and spec.deepspeed is None:
        # LLaMA-Factory's pure_bf16: the weights are loaded in bf16 (worker.model) and trained as they are,
        # so gradients and AdamW states are bf16 too; AMP would add nothing but casts.
        bf16 = False
        if spec.finetuning_type == "full":
            log.info("pure_bf16: weights, gradients and optimizer states in bfloat16, no fp32 master copy")
        else:  # peft makes its adapters float32 by itself; LLaMA-Factory leaves them so
            log.info("pure_bf16: base model in bfloat16 without autocast; peft keeps the LoRA adapters in float32")
    elif spec.pure_bf16:
        # DeepSpeed's own precision mode must match the bf16 weights; it keeps its optimizer partitions in fp32.
        bf16 = cuda
        log.info("pure_bf16 with DeepSpeed: model loaded in bfloat16, DeepSpeed's bf16 mode on")
    else:
        bf16 = cuda and spec.bf16
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # transformers 5 renamed gradient_checkpointing; use whichever this version has without a warning.
    fields = TrainingArguments.__dataclass_fields__
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return TrainingArguments(
        output_dir=str(run_dir / CHECKPOINT_DIR),
        per_device_train_batch_size=spec.per_device_train_batch_size,
        per_device_eval_batch_size=spec.per_device_eval_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        num_train_epochs=spec.num_train_epochs,
        max_steps=spec.max_steps,
        lr_scheduler_type=spec.lr_scheduler_type,
        # transformers 5 has no warmup_ratio: warmup_steps below 1 is read as a ratio.
        warmup_steps=spec.warmup_ratio if spec.warmup_ratio > 0 else spec.warmup_steps,
        bf16=bf16,
        fp16=cuda and spec.fp16,
        **{checkpointing: spec.gradient_checkpointing},
        logging_steps=spec.logging_steps,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit,
        eval_strategy=spec.eval_strategy,
        eval_steps=spec.eval_steps,
        seed=spec.seed,
        dataloader_num_workers=spec.dataloader_num_workers,
        ddp_timeout=spec.ddp_timeout,
        # Every trainable parameter takes part in each step (LoRA or full); as LLaMA-Factory sets for LoRA,
        # this spares DDP a walk of the autograd graph per step and its warning.
        ddp_find_unused_parameters=False if distributed else None,
        deepspeed=spec.deepspeed,
        report_to="none",
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,  # the log is a file; progress is in metrics.jsonl
        remove_unused_columns=False,
    )


def describe_device(cuda: bool) -> str:
    if not cuda:
        return "cpu"
    index = torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def _final_loss(result: Any, callback: MetricsCallback) -> float | None:
    loss = getattr(result, "training_loss", None)
    return round(float(loss), 4) if loss is not None else callback.final_loss
