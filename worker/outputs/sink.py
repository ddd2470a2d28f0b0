"""Metrics records for the daemon: one JSON object a line in RUN_DIR/metrics.jsonl.

A file and not a socket, so the records outlive a restart of the daemon (it
resumes tailing from its offset). Field names follow LLaMA-Factory's
trainer_log.jsonl; a field without a value is left out, never written as null.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

# The file itself lives in worker.spec.records (no torch there, for the launcher).
from worker.spec.records import MetricsSink, hms
from worker.spec.units import GIB


class MetricsCallback(TrainerCallback):
    """Turns the Trainer's events into metric / eval / checkpoint records; also stops, with a checkpoint, on request.

    A stop (a graceful cancel) sets should_save with should_training_stop, so
    the Trainer saves checkpoint-<step> at that step boundary (on_save then
    writes its record) before it leaves the loop: a requeued attempt resumes
    there. When the cancel comes between the micro-batches of a gradient
    accumulation, the loop breaks and the Trainer saves at its epoch end, still
    as of the last completed step; the half-accumulated gradients are dropped,
    and a resume skips exactly the micro-batches of the completed steps.
    """

    def __init__(
        self,
        sink: MetricsSink,
        run_dir: str | Path,
        should_stop: Callable[[], bool] = lambda: False,
        cuda: bool | None = None,
    ) -> None:
        self.sink = sink
        self.run_dir = Path(run_dir)
        self.should_stop = should_stop
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.start_time = time.monotonic()
        self.start_step = 0
        self.start_tokens = 0
        self.final_loss: float | None = None
        self.saved_step = 0  # the last step a checkpoint holds: a stop there need not save it again

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        # On a resume the state already holds the checkpoint's step: time only this attempt's steps.
        self.start_time = time.monotonic()
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen or 0
        self.saved_step = state.global_step  # 0, or the checkpoint this attempt resumed from

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        # Every rank calls should_stop at the same points (it is a collective under torchrun), and they saved at
        # the same steps, so they all stop, and save, at the same boundary.
        if self.should_stop():
            control.should_training_stop = True
            if state.global_step > self.saved_step:
                control.should_save = True

    on_substep_end = on_step_end  # a long gradient accumulation should not delay a cancel

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        logs = logs or {}
        if "train_loss" in logs:  # the summary Trainer logs once at the end
            self.final_loss = float(logs["train_loss"])
        if "loss" not in logs or not state.is_world_process_zero:
            return
        current, total = state.global_step, state.max_steps
        elapsed = time.monotonic() - self.start_time
        steps_done = current - self.start_step
        remaining = elapsed / steps_done * (total - current) if steps_done > 0 else None
        tokens = state.num_input_tokens_seen or 0
        self.sink.write(
            "metric",
            current_steps=current,
            total_steps=total,
            loss=float(logs["loss"]),
            lr=logs.get("learning_rate"),
            epoch=_round(state.epoch),
            percentage=round(100 * current / total, 2) if total else None,
            elapsed_time=hms(elapsed),
            remaining_time=hms(remaining) if remaining is not None else None,
            throughput=round((tokens - self.start_tokens) / elapsed, 2) if tokens and elapsed > 0 else None,
            total_tokens=tokens or None,
            grad_norm=_float(logs.get("grad_norm")),
            **self._vram(),
        )

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics:
            return
        self.sink.write(
            "eval",
            eval_loss=float(metrics["eval_loss"]),
            current_steps=state.global_step,
            total_steps=state.max_steps,
            epoch=_round(state.epoch),
        )

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.saved_step = state.global_step
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.sink.write("checkpoint", current_steps=state.global_step, path=_relative(path, self.run_dir))
        # A cancel that came during this save stops here: what it would save next step is already saved.
        if self.should_stop():
            control.should_training_stop = True

    def _vram(self) -> dict[str, float]:
        if not self.cuda:
            return {}
        return {
            "vram_allocated": round(torch.cuda.memory_allocated() / GIB, 2),
            "vram_reserved": round(torch.cuda.memory_reserved() / GIB, 2),
        }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _relative(path: Path, run_dir: Path) -> str:
    # Not resolved: RUN_DIR/checkpoints is a link to the job's shared directory, and the record names the
    # checkpoint as the run dir sees it (checkpoints/checkpoint-6, not ../checkpoints/checkpoint-6).
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(run_dir))
    except ValueError:  # another drive on Windows; keep it absolute
        return str(path)
