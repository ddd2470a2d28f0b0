"""The fine-tuning recipe a worker runs: validate, set up, train, save, report.

Read it top to bottom like torchtune's LoRA recipe: everything that can be
checked before loading a model is checked first and reported at once; the run
always ends with one `end` record in metrics.jsonl and an exit code from
worker.spec.job, so the daemon never has to parse the log. An attempt resumes from
the job's newest usable checkpoint (worker.run.checkpoints), and a graceful cancel
leaves one behind (worker.run.sink), so requeueing loses nothing.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

from worker.data.batching import batching_name
from worker.data.pipeline import DataError, build_datasets
from worker.launch.oom import exception_chain, exception_is_oom, tried_to_allocate_bytes
from worker.launch.rank_report import rank_report_path, write_rank_report
from worker.model.chunked_loss import ChunkedLoss
from worker.model.load import load_model, load_tokenizer, model_attention
from worker.preflight.confine import BadFile, Roots, input_dirs_from_env, output_dirs_from_env, read_json_object
from worker.run.cancel import CancelFlag, Cancelled, stop_check
from worker.run.checkpoints import (
    Checkpoint,
    Expected,
    ResumePlan,
    TrainingShape,
    compare_shapes,
    mark_unusable,
    move_aside,
    plan_resume,
    read_shape,
)
from worker.run.faults import FaultInjector, faults_from_env
from worker.run.loraplus import LoraPlus
from worker.run.pissa import save_converted, save_initial
from worker.run.plots import plot_after_training
from worker.run.publish import publish
from worker.run.reporting import RunDirTensorBoard, tensorboard_dir
from worker.run.resume import CheckpointLoadError, ResumingTrainer, ShapeCallback
from worker.run.sink import GIB, MetricsCallback, MetricsSink, NullSink, hms, utc_timestamp
from worker.run.trainer_args import merge_arguments, method_arguments
from worker.run.validate import read_and_validate, read_deepspeed, trained_on_adapter
from worker.spec.job import (
    CHECKPOINT_DIR,
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OOM,
    METRICS_FILE,
    OUTPUT_DIR,
    JobSpec,
)
from worker.spec.loss_chunks import CHUNKED, FULL_LOGITS, loss_kernel
from worker.spec.methods import MethodError, describe_method, expected_adapter
from worker.spec.records import make_record

log = logging.getLogger("worker")


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
    # Under torchrun (worker.launch.torchrun) every rank runs this recipe; rank 0 alone writes metrics.jsonl.
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    report_path = rank_report_path(os.environ)
    roots = input_dirs_from_env(os.environ)  # every file the job reads must lie inside these (None: run by hand)
    sink = MetricsSink(run_dir / METRICS_FILE) if rank == 0 else NullSink()
    cuda = torch.cuda.is_available()
    trainer: ResumingTrainer | None = None
    events = tensorboard_dir(run_dir)

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
                peak_vram_allocated=round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
                peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
                **token_counts(trainer),
                # whatever the run's end: what it logged for TensorBoard so far is there (report_to: tensorboard)
                tensorboard_dir=str(events.resolve()) if events.is_dir() else None,
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

    def start_record(resume: Checkpoint | None, plan: ResumePlan, **extra: Any) -> None:
        sink.write_record(  # written as it is: cuda_visible_devices is meaningful as null (rank 0 only)
            {
                "kind": "start",
                "timestamp": utc_timestamp(),
                "current_steps": resume.step if resume else 0,
                "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device": describe_device(cuda),
                "world_size": world_size,
                # Only when earlier progress exists: the daemon hides earlier attempts' records past this step.
                # 0 means this attempt starts over although checkpoints were there.
                **({"resumed_from_step": resume.step if resume else 0} if plan.found_any else {}),
                **extra,
            }
        )

    try:
        if cancel.requested:
            raise Cancelled()
        # 1. validate everything that can be checked without loading a model, and pick the checkpoint to
        # resume from (cheaply: the start record says which before the model loads)
        spec, problems = read_and_validate(run_dir, cuda=cuda)
        if spec is None or problems:
            for problem in problems:
                log.error("bad input: %s", problem)
            return end("failed", EXIT_BAD_INPUT, error="; ".join(problems))
        lora_rank, adapter = expected_adapter(spec, trained_on_adapter(spec, roots))
        method = describe_method(spec)
        expected = Expected(spec.finetuning_type, lora_rank, spec.deepspeed is not None, world_size, adapter, method)
        plan = plan_resume(run_dir / CHECKPOINT_DIR, expected, set_aside=rank == 0)
        resume = plan.checkpoint
        _log_plan(plan)
        batching = how_it_batches(spec, cuda, roots)
        start_record(resume, plan, **batching)

        # 2. set up: seed, arguments (under torchrun they join the process group, and DeepSpeed ZeRO-3 must
        # know of its config before the model is loaded, to load it partitioned), tokenizer, data
        set_seed(spec.seed)
        args = training_arguments(spec, run_dir, cuda, roots, batching["loss_kernel"])
        tokenizer = load_tokenizer(spec, roots)
        train_set, eval_set, collator = build_datasets(spec, tokenizer, roots, output_dirs_from_env(os.environ))
        shape = TrainingShape(
            spec.per_device_train_batch_size, spec.gradient_accumulation_steps, world_size, len(train_set),
            spec.cutoff_len, spec.gradient_checkpointing, spec.deepspeed is not None, method,
        )  # fmt: skip
        faults = faults_from_env(os.environ)

        # 3. the model and the Trainer, then train from the checkpoint. One that passed the cheap checks but
        # fails to load is set aside, and the attempt falls back to the one before it, or to a fresh start,
        # with a second start record that corrects resumed_from_step (nothing has trained yet).
        while True:
            set_seed(spec.seed)  # a fallback starts from the same random state as a first try
            if resume is not None:
                why, same = compare_shapes(read_shape(resume.path), shape, resume.step)
                (log.info if same else log.warning)("resuming from %s: %s", resume.path.name, why)
            callback = MetricsCallback(sink, run_dir, should_stop=stop_check(cancel, args), cuda=cuda)
            callbacks: list[Any] = [ShapeCallback(shape), callback]  # the checkpoint record comes once all is written
            if faults:
                callbacks.append(FaultInjector(faults, rank))
            if spec.report_to == "tensorboard":
                callbacks.append(RunDirTensorBoard(run_dir))
            trainer = ResumingTrainer(
                model=load_model(spec, cuda, roots),
                args=args,
                train_dataset=train_set,
                eval_dataset=eval_set,
                data_collator=collator,
                processing_class=tokenizer,
                callbacks=callbacks,
                loraplus=LoraPlus.of(spec),
            )
            if batching["loss_kernel"] == CHUNKED:
                trainer.chunked = chunked_loss(trainer.model, train_set[0]["input_ids"])
                batching["loss_kernel"] = CHUNKED if trainer.chunked is not None else FULL_LOGITS
            if spec.pissa_init and spec.pissa_convert and trainer.is_world_process_zero():
                pissa_initial = save_initial(trainer.model, run_dir)
            cancel.training = True
            try:
                result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
                break
            except CheckpointLoadError as exc:
                cancel.training = False
                if cancel.requested:
                    raise Cancelled() from exc
                assert resume is not None
                resume = _fall_back(exc, resume, expected, rank)
                start_record(resume, plan, resume_error=str(exc)[:2000])
                trainer = None
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
        cancel.training = False
        if cancel.requested:  # stopped at a step boundary, with a checkpoint saved there
            raise Cancelled()

        # 4. a run that diverged is a failure, never a NaN adapter reported as succeeded
        diverged = divergence(result, trainer.model)
        if diverged is not None:
            log.error("training diverged: %s", diverged)
            return end("failed", EXIT_FAILED, error=f"training diverged: {diverged}")

        # 5. a last evaluation when asked for (LLaMA-Factory's do_eval), recorded like the others; the loss
        # plots, as LLaMA-Factory's, show the history up to the end of training
        history = list(trainer.state.log_history)
        if spec.do_eval and eval_set is not None:
            trainer.evaluate()

        # 6. save the adapter (LoRA, OFT) or the whole model, with the tokenizer beside it. Every rank calls
        # save_model (ZeRO-3 gathers the weights from all of them); the main process writes, then places the
        # result in output_dir too when the spec names one (worker.run.publish).
        output = run_dir / OUTPUT_DIR
        plots: list[str] = []
        plot_error: str | None = None
        trainer.save_model(str(output))
        where = str(output.resolve())
        if trainer.is_world_process_zero():
            if spec.pissa_init and spec.pissa_convert:
                save_converted(trainer.model, pissa_initial, output)
            tokenizer.save_pretrained(str(output))
            log.info("saved %s to %s", "adapter" if spec.finetuning_type in ("lora", "oft") else "model", output)
            if spec.plot_loss:  # beside the result, as LLaMA-Factory puts them, so output_dir gets them too
                plots, plot_error = plot_after_training(history, output, spec.name)
            if spec.output_dir:
                try:
                    where = publish(output, spec.output_dir, output_dirs_from_env(os.environ))
                except BadFile as exc:
                    why = f"training succeeded and the result is in {where}, but {exc}"
                    return end("failed", EXIT_FAILED, error=why, output=OUTPUT_DIR)
        return end(
            "succeeded", 0, output=OUTPUT_DIR, result=where, final_loss=_final_loss(result, callback),
            loss_kernel=batching["loss_kernel"], plots=[str(Path(where) / name) for name in plots] or None,
            plot_error=plot_error,
        )  # fmt: skip
    except BaseException as exc:  # every way out must leave an end record
        return _classify(exc, cancel, end)


def _log_plan(plan: ResumePlan) -> None:
    for checkpoint, why in plan.rejected:
        log.warning("not resuming from %s: %s", checkpoint.path.name, why)
    if plan.checkpoint is not None:
        log.info("resuming from %s (step %d)", plan.checkpoint.path, plan.checkpoint.step)
    elif plan.found_any:
        log.warning("no usable checkpoint: starting over from step 0")


def _fall_back(exc: CheckpointLoadError, failed: Checkpoint, expected: Expected, rank: int) -> Checkpoint | None:
    """The usable checkpoint before `failed`, once `failed` is out of the way of every later attempt.

    Every rank reads the same files, so every rank fails on the same
    checkpoint and falls back to the same one. Rank 0 moves it aside (a rank
    still reading it then fails too, the same way); when it cannot be moved, a
    mark in it tells later attempts to pass it over.
    """
    log.warning("%s could not be loaded (%s); falling back", failed.path.name, exc.why)
    if rank == 0 and move_aside(failed, f"it could not be loaded: {exc.why}") is None:
        mark_unusable(failed, exc.why)
    plan = plan_resume(failed.path.parent, expected, below=failed.step, set_aside=rank == 0)
    _log_plan(plan)
    if plan.checkpoint is None:
        log.warning("no older usable checkpoint: starting over from step 0")
    return plan.checkpoint


def _classify(exc: BaseException, cancel: CancelFlag, end: Any) -> int:
    """Map an exception to the end record and exit code the supervisor expects."""
    if isinstance(exc, Cancelled) or cancel.requested:
        # A DataLoader worker killed by the same SIGTERM surfaces as its own error: still a cancel.
        log.info("cancelled by SIGTERM")
        return end("cancelled", EXIT_CANCELLED, error="cancelled (SIGTERM)")
    if isinstance(exc, (DataError, BadFile, MethodError)):
        # A file the job names is wrong (not UTF-8, truncated, outside the input dirs), or the method asks for
        # what the model does not have (a module freeze cannot find): the message names it.
        log.error("bad input: %s", exc)
        return end("failed", EXIT_BAD_INPUT, error=str(exc).strip()[:2000])
    error = f"{type(exc).__name__}: {str(exc).strip()}"[:2000]
    log.error("training failed", exc_info=exc)
    if exception_is_oom(exc):
        # In a step, an evaluation or a checkpoint save alike; the daemon may retry with a smaller micro-batch.
        return end("oom", EXIT_OOM, error=error, tried_to_allocate_bytes=_tried_to_allocate(exc))
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: record, then let it go on
        end("failed", EXIT_FAILED, error=error or type(exc).__name__)
        raise exc
    return end("failed", EXIT_FAILED, error=error)


def _tried_to_allocate(exc: BaseException) -> int | None:
    """The failed allocation, from the exception or the one it was raised from."""
    said = (tried_to_allocate_bytes(str(e)) for e in exception_chain(exc))
    return next((wanted for wanted in said if wanted is not None), None)


def how_it_batches(spec: JobSpec, cuda: bool, roots: Roots) -> dict[str, Any]:
    """What the start record says of the job's batching, attention and loss (worker.data.batching,
    worker.model.packed_attention, worker.model.chunked_loss), decided from config.json before the model loads."""
    try:
        config = read_json_object(Path(spec.model_name_or_path) / "config.json", roots)
    except BadFile:
        config = {}  # the model load reports it
    zero = (read_deepspeed(Path(spec.deepspeed), roots).get("zero_optimization") or {}) if spec.deepspeed else {}
    kernel = loss_kernel(
        spec, config, cuda=cuda, zero_stage=int(zero.get("stage", 0)),
        liger_installed=importlib.util.find_spec("liger_kernel") is not None,
    )  # fmt: skip
    return {
        "micro_batch": spec.per_device_train_batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        "batching": batching_name(spec),
        "attention": model_attention(spec, config) or "transformers' default",
        "loss_kernel": kernel,
    }


def chunked_loss(model: Any, example: list[int]) -> ChunkedLoss | None:
    """ftq's chunked loss for the model, when it gives the model's own logits (worker.model.chunked_loss)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    chunked = ChunkedLoss(model, vocab)
    if chunked.matches_model(model, example):
        log.info("fused_cross_entropy: the loss is computed in chunks of %d tokens (no whole logits)", chunked.chunk)
        return chunked
    log.warning("fused_cross_entropy: this model's logits are not its output layer's alone; using the full logits")
    return None


def token_counts(trainer: Any) -> dict[str, Any]:
    """The real (non-padding) and computed tokens of the attempt, and the share of padding."""
    if trainer is None or not trainer.tokens_computed:
        return {}
    real, computed = int(trainer.state.num_input_tokens_seen or 0), trainer.tokens_computed
    return {"real_tokens": real, "computed_tokens": computed, "pad_share": round(1 - real / computed, 4)}


def training_arguments(
    spec: JobSpec, run_dir: Path, cuda: bool, roots: Roots = None, loss_kernel: str = FULL_LOGITS
) -> TrainingArguments:
    if not cuda and (spec.bf16 or spec.fp16):
        log.info("no CUDA device: mixed precision (bf16/fp16) is skipped, training in float32")
    if spec.pure_bf16 and spec.deepspeed is None:
        # LLaMA-Factory's pure_bf16: the weights are loaded in bf16 (worker.model.load) and trained as they are,
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
    ftq = dict(
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


def describe_device(cuda: bool) -> str:
    if not cuda:
        return "cpu"
    index = torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def divergence(result: Any, model: torch.nn.Module) -> str | None:
    """Why the trained weights are unusable (a non-finite loss or weight), or None when they are fine."""
    loss = getattr(result, "training_loss", None)
    bad = next(
        (name for name, p in model.named_parameters() if p.requires_grad and p.numel() and not p.isfinite().all()),
        None,
    )
    if bad is None and (loss is None or math.isfinite(loss)):
        return None
    where = f"the weight {bad} holds NaN or infinity" if bad else "the weights are finite"
    return (
        f"the training loss is {loss} and {where}, so nothing was saved; lower learning_rate, "
        "keep max_grad_norm on (e.g. 1.0), or train in bf16 rather than fp16"
    )


def _final_loss(result: Any, callback: MetricsCallback) -> float | None:
    loss = getattr(result, "training_loss", None)
    return round(float(loss), 4) if loss is not None else callback.final_loss
