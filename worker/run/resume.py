"""Resuming with transformers' Trainer: load failures told apart, and checkpoints that say how they were made.

worker.run.checkpoints picks the checkpoint with cheap checks; a file can still be
wrong in a way only loading it shows (a tensor of the wrong shape, an
optimizer state of another model). ResumingTrainer turns such a failure into
CheckpointLoadError, raised before the first step, so the recipe can fall back
to an older checkpoint instead of failing the attempt. An OOM while loading
stays an OOM and a cancel stays a cancel: neither says anything about the
checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from worker.launch.oom import exception_is_oom
from worker.run.cancel import Cancelled
from worker.run.checkpoints import UNUSABLE_MARK, TrainingShape, write_shape
from worker.run.loraplus import LoraPlus
from worker.run.loss_trainer import LossAndTokens

log = logging.getLogger(__name__)


class CheckpointLoadError(Exception):
    """A checkpoint that passed the cheap checks could not be loaded; the message says which part and why."""

    def __init__(self, checkpoint: str, why: str) -> None:
        super().__init__(f"{Path(checkpoint).name}: {why}")
        self.checkpoint = checkpoint
        self.why = why


class ResumingTrainer(LossAndTokens, Trainer):
    """transformers' Trainer whose checkpoint loading fails with CheckpointLoadError.

    The three methods wrapped are where Trainer.train reads a checkpoint: the
    weights or adapter, then the optimizer and scheduler, then the RNG state.
    A missing or broken RNG state only costs bit-for-bit reproducibility
    (transformers itself just logs a missing one), so it is logged, not raised.

    With `loraplus` the optimizer is LoRA+'s (worker.run.loraplus); created here, as
    the Trainer creates its own, so that DeepSpeed and resuming see it the same way.
    """

    def __init__(self, *args: Any, loraplus: LoraPlus | None = None, **kwargs: Any) -> None:
        self.loraplus = loraplus
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: Any = None) -> Any:
        if self.loraplus is None or self.optimizer is not None:
            return super().create_optimizer(model)
        self.optimizer = self.loraplus.create_optimizer(self.model if model is None else model, self.args)
        log.info("LoRA+ optimizer: B matrices at learning_rate x %g", self.loraplus.lr_ratio)
        return self.optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        except Exception as exc:
            _raise_load_error(exc, resume_from_checkpoint, "the weights")

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except Exception as exc:
            _raise_load_error(exc, checkpoint, "the optimizer or scheduler state")

    def _load_rng_state(self, checkpoint: str | None) -> None:
        try:
            super()._load_rng_state(checkpoint)
        except Exception as exc:
            if isinstance(exc, Cancelled):
                raise
            log.warning(
                "the RNG state in %s could not be loaded (%s: %s); training goes on, not bit-for-bit reproducible",
                checkpoint, type(exc).__name__, exc,
            )  # fmt: skip


def _raise_load_error(exc: Exception, checkpoint: str | None, what: str) -> NoReturn:
    if isinstance(exc, Cancelled) or exception_is_oom(exc) or checkpoint is None:
        raise exc
    raise CheckpointLoadError(checkpoint, f"loading {what} failed: {type(exc).__name__}: {exc}") from exc


class ShapeCallback(TrainerCallback):
    """Writes ftq_checkpoint.json into each checkpoint, and keeps trainer_state.json's batch size true.

    On resume the Trainer takes the whole TrainerState from the checkpoint,
    train_batch_size included, and only warns when the micro-batch differs
    (transformers.trainer_utils.compare_trainer_and_checkpoint_args). It then
    trains with the new micro-batch but would save the old one into every
    later checkpoint; on_train_begin puts the real one back.
    """

    def __init__(self, shape: TrainingShape) -> None:
        self.shape = shape

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        state.train_batch_size = args.train_batch_size

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        try:
            write_shape(path, self.shape)
            # Saved just now, so usable: a mark left by an attempt that could not load an earlier save here is stale.
            (path / UNUSABLE_MARK).unlink(missing_ok=True)
        except OSError as exc:  # the checkpoint itself is whole; only the comparison on resume is lost
            log.warning("could not write %s: %s", path, exc)
