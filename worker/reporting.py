"""TensorBoard's event files for a job that asks for them (report_to: tensorboard), in RUN_DIR/tensorboard.

transformers' own TensorBoardCallback writes them: every scalar the Trainer logs
(train/loss, train/learning_rate, train/grad_norm, eval/loss …) at its global
step, from the main process only. ftq adds the callback itself instead of
passing report_to to TrainingArguments, so that nothing else transformers might
report to is switched on, and points it at the run dir: transformers 5 has no
logging_dir argument, and its default (output_dir/runs/…) would put the files
among the checkpoints. Every attempt of a job writes into the same directory;
TensorBoard drops the steps a resumed attempt logs again (its purge of
out-of-order steps), so the curves read as one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.layout import TENSORBOARD_DIR


def tensorboard_dir(run_dir: Path) -> Path:
    return run_dir / TENSORBOARD_DIR


def tensorboard_callback(run_dir: Path) -> Any:
    """transformers' TensorBoardCallback writing into the run dir (needs the tensorboard package)."""
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    # What TENSORBOARD_LOGGING_DIR would set, without changing the worker's environment for everything else.
    callback.logging_dir = str(tensorboard_dir(run_dir))
    return callback
