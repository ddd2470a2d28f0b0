"""TensorBoard's event files for a job that asks for them (report_to: tensorboard), in RUN_DIR/tensorboard.

transformers' own TensorBoardCallback writes them: every scalar the Trainer logs
(train/loss, train/learning_rate, train/grad_norm, eval/loss …) at its global
step, from the main process only. ftq adds the callback itself instead of
passing report_to to TrainingArguments, so that nothing else transformers might
report to is switched on, and points it at the run dir: transformers 5 has no
logging_dir argument, and its default (output_dir/runs/…) would put the files
among the checkpoints.

Each attempt of a job has its own run dir (job-N/attempt-M), so `tensorboard
--logdir` on the job's directory shows its attempts side by side, a resumed one
from the step after its checkpoint. A run dir trained in again (a worker run by
hand twice) logs the steps after the checkpoint k it resumes from a second time,
so the writer opens with TensorBoard's purge step k + 1: TensorBoard drops what
the earlier run logged from there on, and the curve reads as one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.integrations import TensorBoardCallback

from worker.spec.layout import TENSORBOARD_DIR


def tensorboard_dir(run_dir: Path) -> Path:
    return run_dir / TENSORBOARD_DIR


class RunDirTensorBoard(TensorBoardCallback):
    """transformers' TensorBoardCallback writing into the run dir, purging what a resumed run logs again."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()  # raises, naming the package, when tensorboard is missing (refused at submit before)
        # What TENSORBOARD_LOGGING_DIR would set, without changing the worker's environment for everything else.
        self.logging_dir = str(tensorboard_dir(run_dir))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The trainer's state is the checkpoint's by now: global_step is the step this run resumes from.
        if state.is_world_process_zero and self.tb_writer is None:
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=state.global_step + 1)
        super().on_train_begin(args, state, control, **kwargs)
