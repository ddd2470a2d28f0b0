"""What a real run leaves for LLaMA-Factory's users besides its adapter: loss plots and TensorBoard's event files.

One real worker trains the shipped tiny model with plot_loss: true, report_to:
tensorboard and evaluation on a held-out part (val_size); the PNGs and the
event files are checked against the losses the run wrote to metrics.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_worker import log_of, make_run_dir, records
from worker.outputs.plots import series
from worker.spec.layout import LOG_FILE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("matplotlib") is None or importlib.util.find_spec("tensorboard") is None,
        reason="the plot and tensorboard extras are not installed here",
    ),
]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def train(run_dir: Path) -> None:
    """Run the worker in run_dir to its end, as the supervisor starts it (tests.integration.test_worker)."""
    with open(run_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", str(run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    try:
        assert proc.wait(timeout=300) == 0, log_of(run_dir)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def scalars(directory: str | Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of each scalar TensorBoard shows for the tag, in order: a step logged twice shows twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of 8 steps: a loss every 2 steps, an evaluation every 4, a checkpoint at the end.

    report_to also names wandb, which ftq does not run: the worker must write TensorBoard's files all the same.
    """
    run_dir = make_run_dir(
        tmp_path_factory.mktemp("outputs"), max_steps=8, logging_steps=2, save_steps=8, val_size=8,
        eval_strategy="steps", eval_steps=4, plot_loss=True, report_to=["tensorboard", "wandb"],
    )  # fmt: skip
    train(run_dir)
    return run_dir


def logged(run_dir: Path, kind: str, key: str) -> dict[int, float]:
    return {r["current_steps"]: r[key] for r in records(run_dir) if r["kind"] == kind}


def test_plot_loss_draws_the_training_and_eval_loss_beside_the_result(run: Path):
    end = records(run)[-1]
    assert end["status"] == "succeeded", end
    output = run / "output"
    assert end["plots"] == [str((output / name).resolve()) for name in ("training_loss.png", "training_eval_loss.png")]
    assert "plot_error" not in end
    for path in map(Path, end["plots"]):
        assert png_size(path) == (640, 480) and path.stat().st_size > 10_000
    assert (output / "adapter_model.safetensors").is_file()  # the plots sit beside the adapter, as in LLaMA-Factory


def test_the_plotted_series_are_the_losses_the_run_reported(run: Path):
    # The trainer's log history, which the plots are drawn from, as the last checkpoint keeps it.
    history = json.loads((run / "checkpoints/checkpoint-8/trainer_state.json").read_text())["log_history"]
    losses, evals = logged(run, "metric", "loss"), logged(run, "eval", "eval_loss")
    assert list(losses) == [2, 4, 6, 8] and list(evals) == [4, 8]
    assert series(history, "loss") == (list(losses), list(losses.values()))
    assert series(history, "eval_loss") == (list(evals), list(evals.values()))


def test_tensorboard_event_files_hold_the_losses_at_the_logged_steps(run: Path):
    end = records(run)[-1]
    assert end["tensorboard_dir"] == str((run / "tensorboard").resolve())
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((run / "checkpoints").glob("runs")), "transformers' default place, among the checkpoints"
    for tag, kind, key in (("train/loss", "metric", "loss"), ("eval/loss", "eval", "eval_loss")):
        shown, reported = scalars(end["tensorboard_dir"], tag), logged(run, kind, key)
        assert [step for step, _ in shown] == list(reported), tag
        assert [value for _, value in shown] == pytest.approx(list(reported.values()), rel=1e-6), tag
    assert [step for step, _ in scalars(end["tensorboard_dir"], "train/learning_rate")] == [2, 4, 6, 8]


def test_a_run_dir_trained_in_again_shows_one_curve_in_tensorboard(tmp_path: Path):
    run_dir = make_run_dir(tmp_path, max_steps=8, logging_steps=2, save_steps=4, report_to="tensorboard")
    train(run_dir)
    shutil.rmtree(run_dir / "checkpoints/checkpoint-8")  # the second run resumes from step 4 and logs 6, 8 again
    train(run_dir)
    starts = [i for i, r in enumerate(records(run_dir)) if r["kind"] == "start"]
    assert len(starts) == 2 and records(run_dir)[starts[1]]["resumed_from_step"] == 4
    second = {r["current_steps"]: r["loss"] for r in records(run_dir)[starts[1] :] if r["kind"] == "metric"}
    assert list(second) == [6, 8]
    train_loss = scalars(run_dir / "tensorboard", "train/loss")
    assert [step for step, _ in train_loss] == [2, 4, 6, 8]  # not 2, 4, 6, 8, 6, 8: the first run's 6, 8 are purged
    assert [value for _, value in train_loss[2:]] == pytest.approx(list(second.values()), rel=1e-6)
