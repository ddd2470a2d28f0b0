"""The fine-tuning recipe a worker runs: validate, set up, train, save, report.

Read it top to bottom like torchtune's LoRA recipe: `run` calls one function per
stage. Everything that can be checked before loading a model is checked first and
reported at once; the run always ends with one `end` record in metrics.jsonl and an
exit code from worker.spec.exits (worker.run.attempt), so the daemon never has to
parse the log. An attempt resumes from the job's newest usable checkpoint
(worker.run.checkpoints), and a graceful cancel leaves one behind (worker.outputs.sink),
so requeueing loses nothing.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

from worker.data.batching import batching_name
from worker.data.pipeline import build_datasets
from worker.model.chunked_loss import ChunkedLoss
from worker.model.load import load_model, load_tokenizer, model_attention
from worker.outputs.pissa import save_converted, save_initial
from worker.outputs.plots import plot_after_training
from worker.outputs.publish import publish
from worker.outputs.reporting import RunDirTensorBoard
from worker.outputs.sink import MetricsCallback
from worker.preflight.confine import BadFile, Roots, output_dirs_from_env, read_json_object
from worker.run.arguments import training_arguments
from worker.run.attempt import Attempt
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
from worker.run.resume import CheckpointLoadError, ResumingTrainer, ShapeCallback
from worker.run.validate import read_and_validate, read_deepspeed, trained_on_adapter
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_FAILED
from worker.spec.job import JobSpec
from worker.spec.layout import CHECKPOINT_DIR, OUTPUT_DIR
from worker.spec.loss_chunks import CHUNKED, FULL_LOGITS, loss_kernel
from worker.spec.methods import describe_method, expected_adapter

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
    attempt = Attempt.here(run_dir)
    try:
        if cancel.requested:
            raise Cancelled()
        # 1. validate everything that can be checked without loading a model, and pick the checkpoint to
        # resume from (cheaply: the start record says which before the model loads)
        spec, problems = read_and_validate(run_dir, cuda=attempt.cuda)
        if spec is None or problems:
            for problem in problems:
                log.error("bad input: %s", problem)
            return attempt.end("failed", EXIT_BAD_INPUT, error="; ".join(problems))
        job = plan(attempt, spec)
        # 2. set up: seed, arguments, tokenizer, data
        setup = set_up(attempt, job)
        # 3. the model and the Trainer, then train from the checkpoint
        trained = train(attempt, job, setup, cancel)
        # 4. a run that diverged is a failure, never a NaN adapter reported as succeeded
        diverged = divergence(trained.result, trained.trainer.model)
        if diverged is not None:
            log.error("training diverged: %s", diverged)
            return attempt.end("failed", EXIT_FAILED, error=f"training diverged: {diverged}")
        # 5. a last evaluation when asked for (LLaMA-Factory's do_eval), recorded like the others; the loss
        # plots, as LLaMA-Factory's, show the history up to the end of training
        history = list(trained.trainer.state.log_history)
        if spec.do_eval and setup.eval_set is not None:
            trained.trainer.evaluate()
        # 6. save, and report
        return save(attempt, job, setup, trained, history)
    except BaseException as exc:  # every way out must leave an end record
        return attempt.ended_by(exc, cancel)


@dataclass
class Job:
    """The validated spec, what a checkpoint must match to resume from, and the batching the start record says."""

    spec: JobSpec
    expected: Expected
    plan: ResumePlan
    batching: dict[str, Any]


def plan(attempt: Attempt, spec: JobSpec) -> Job:
    """Pick the checkpoint to resume from, decide the batching, and write the start record."""
    lora_rank, adapter = expected_adapter(spec, trained_on_adapter(spec, attempt.roots))
    method = describe_method(spec)
    expected = Expected(
        spec.finetuning_type, lora_rank, spec.deepspeed is not None, attempt.world_size, adapter, method
    )
    resume_plan = plan_resume(attempt.run_dir / CHECKPOINT_DIR, expected, set_aside=attempt.rank == 0)
    _log_plan(resume_plan)
    batching = how_it_batches(spec, attempt.cuda, attempt.roots)
    attempt.start_record(resume_plan.checkpoint, resume_plan, **batching)
    return Job(spec, expected, resume_plan, batching)


@dataclass
class Setup:
    """What training needs besides the model."""

    args: TrainingArguments
    tokenizer: PreTrainedTokenizerBase
    train_set: Any
    eval_set: Any
    collator: Any
    shape: TrainingShape


def set_up(attempt: Attempt, job: Job) -> Setup:
    """Seed, arguments (under torchrun they join the process group, and DeepSpeed ZeRO-3 must know of its config
    before the model is loaded, to load it partitioned), tokenizer, data."""
    spec = job.spec
    set_seed(spec.seed)
    args = training_arguments(spec, attempt.run_dir, attempt.cuda, attempt.roots, job.batching["loss_kernel"])
    tokenizer = load_tokenizer(spec, attempt.roots)
    train_set, eval_set, collator = build_datasets(spec, tokenizer, attempt.roots, output_dirs_from_env(os.environ))
    shape = TrainingShape(
        spec.per_device_train_batch_size, spec.gradient_accumulation_steps, attempt.world_size, len(train_set),
        spec.cutoff_len, spec.gradient_checkpointing, spec.deepspeed is not None, job.expected.method,
    )  # fmt: skip
    return Setup(args, tokenizer, train_set, eval_set, collator, shape)


@dataclass
class Trained:
    trainer: ResumingTrainer
    result: Any  # transformers' TrainOutput
    callback: MetricsCallback
    pissa_initial: Any  # the PiSSA adapter before training, when pissa_convert saves the converted one


def train(attempt: Attempt, job: Job, setup: Setup, cancel: CancelFlag) -> Trained:
    """Load the model into a Trainer and train from the checkpoint.

    A checkpoint that passed the cheap checks but fails to load is set aside, and the attempt falls back to
    the one before it, or to a fresh start, with a second start record that corrects resumed_from_step
    (nothing has trained yet).
    """
    spec, resume, faults = job.spec, job.plan.checkpoint, faults_from_env(os.environ)
    pissa_initial = None
    while True:
        set_seed(spec.seed)  # a fallback starts from the same random state as a first try
        if resume is not None:
            why, same = compare_shapes(read_shape(resume.path), setup.shape, resume.step)
            (log.info if same else log.warning)("resuming from %s: %s", resume.path.name, why)
        callback = MetricsCallback(
            attempt.sink, attempt.run_dir, should_stop=stop_check(cancel, setup.args), cuda=attempt.cuda
        )
        callbacks: list[Any] = [ShapeCallback(setup.shape), callback]  # the checkpoint record comes once all is written
        if faults:
            callbacks.append(FaultInjector(faults, attempt.rank))
        if spec.report_to == "tensorboard":
            callbacks.append(RunDirTensorBoard(attempt.run_dir))
        trainer = attempt.trainer = ResumingTrainer(
            model=load_model(spec, attempt.cuda, attempt.roots),
            args=setup.args,
            train_dataset=setup.train_set,
            eval_dataset=setup.eval_set,
            data_collator=setup.collator,
            processing_class=setup.tokenizer,
            callbacks=callbacks,
            loraplus=LoraPlus.of(spec),
        )
        if job.batching["loss_kernel"] == CHUNKED:
            trainer.chunked = chunked_loss(trainer.model, setup.train_set[0]["input_ids"])
            job.batching["loss_kernel"] = CHUNKED if trainer.chunked is not None else FULL_LOGITS
        if spec.pissa_init and spec.pissa_convert and trainer.is_world_process_zero():
            pissa_initial = save_initial(trainer.model, attempt.run_dir)
        cancel.training = True
        try:
            result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
            break
        except CheckpointLoadError as exc:
            cancel.training = False
            if cancel.requested:
                raise Cancelled() from exc
            assert resume is not None
            resume = _fall_back(exc, resume, job.expected, attempt.rank)
            attempt.start_record(resume, job.plan, resume_error=str(exc)[:2000])
            attempt.trainer = None
            del trainer
            gc.collect()
            if attempt.cuda:
                torch.cuda.empty_cache()
    cancel.training = False
    if cancel.requested:  # stopped at a step boundary, with a checkpoint saved there
        raise Cancelled()
    return Trained(trainer, result, callback, pissa_initial)


def save(attempt: Attempt, job: Job, setup: Setup, trained: Trained, history: list[dict[str, Any]]) -> int:
    """Save the adapter (LoRA, OFT) or the whole model, with the tokenizer beside it; end the run.

    Every rank calls save_model (ZeRO-3 gathers the weights from all of them); the main process writes, then
    places the result in output_dir too when the spec names one (worker.outputs.publish).
    """
    spec, trainer = job.spec, trained.trainer
    output = attempt.run_dir / OUTPUT_DIR
    plots: list[str] = []
    plot_error: str | None = None
    trainer.save_model(str(output))
    where = str(output.resolve())
    if trainer.is_world_process_zero():
        if spec.pissa_init and spec.pissa_convert:
            save_converted(trainer.model, trained.pissa_initial, output)
        setup.tokenizer.save_pretrained(str(output))
        log.info("saved %s to %s", "adapter" if spec.finetuning_type in ("lora", "oft") else "model", output)
        if spec.plot_loss:  # beside the result, as LLaMA-Factory puts them, so output_dir gets them too
            plots, plot_error = plot_after_training(history, output, spec.name)
        if spec.output_dir:
            try:
                where = publish(output, spec.output_dir, output_dirs_from_env(os.environ))
            except BadFile as exc:
                why = f"training succeeded and the result is in {where}, but {exc}"
                return attempt.end("failed", EXIT_FAILED, error=why, output=OUTPUT_DIR)
    return attempt.end(
        "succeeded", 0, output=OUTPUT_DIR, result=where, final_loss=_final_loss(trained.result, trained.callback),
        loss_kernel=job.batching["loss_kernel"], plots=[str(Path(where) / name) for name in plots] or None,
        plot_error=plot_error,
    )  # fmt: skip


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
