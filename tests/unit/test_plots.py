"""plot_loss's series and smoothing on plain data (LLaMA-Factory's), and the PNGs it draws with matplotlib's Agg."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from worker.outputs.plots import PLOT_KEYS, file_name, plot_after_training, plot_loss, series, smooth

# A trainer's log history as transformers keeps it: train logs, evals, and the summary at the end.
HISTORY = [
    {"loss": 2.5, "grad_norm": 1.2, "learning_rate": 0.01, "epoch": 0.1, "step": 2},
    {"loss": 2.25, "grad_norm": 1.0, "learning_rate": 0.01, "epoch": 0.2, "step": 4},
    {"eval_loss": 2.4, "eval_runtime": 0.1, "epoch": 0.2, "step": 4},
    {"loss": 1.75, "grad_norm": 0.9, "learning_rate": 0.01, "epoch": 0.3, "step": 6},
    {"loss": 1.5, "grad_norm": 0.8, "learning_rate": 0.01, "epoch": 0.4, "step": 8},
    {"eval_loss": 1.9, "eval_runtime": 0.1, "epoch": 0.4, "step": 8},
    {"train_runtime": 3.0, "train_loss": 2.0, "epoch": 0.4, "step": 8},
]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_series_is_every_logged_value_of_the_key_at_its_step():
    assert series(HISTORY, "loss") == ([2, 4, 6, 8], [2.5, 2.25, 1.75, 1.5])  # not train_loss, the summary
    assert series(HISTORY, "eval_loss") == ([4, 8], [2.4, 1.9])
    assert series(HISTORY, "eval_accuracy") == ([], [])
    assert series([{"loss": True, "step": 1}, {"loss": 3, "step": 2}], "loss") == ([2], [3.0])


def test_smoothing_is_tensorboards_moving_average_weighted_by_the_length_as_in_llamafactory():
    assert smooth([]) == []
    assert smooth([5.0]) == [5.0]
    # n = 2: weight 1.8 * (sigmoid(0.1) - 0.5) = 0.04496...; the first value starts the average
    assert smooth([1.0, 3.0]) == pytest.approx([1.0, 1.0 * 0.0449625 + 3.0 * (1 - 0.0449625)])
    assert smooth([4.0, 2.0, 3.0, 1.0]) == pytest.approx([4.0, 2.1794024, 2.9263914, 1.1727996])
    long = smooth([float(i % 2) for i in range(1000)])  # weight 0.9: the zigzag flattens to its mean
    assert all(0.4 < value < 0.6 for value in long[100:])


def test_file_names_are_llamafactorys():
    assert [file_name(key) for key in PLOT_KEYS] == ["training_loss.png", "training_eval_loss.png"]
    assert file_name("eval_a/b_loss") == "training_eval_a_b_loss.png"


def test_each_logged_key_is_drawn_as_a_png_and_a_key_never_logged_is_not(tmp_path: Path):
    assert plot_loss(HISTORY, tmp_path, "tiny") == ["training_loss.png", "training_eval_loss.png"]
    for name in ("training_loss.png", "training_eval_loss.png"):
        assert png_size(tmp_path / name) == (640, 480)  # matplotlib's default figure at 100 dpi
        assert (tmp_path / name).stat().st_size > 10_000  # two curves, axes and a legend, not a blank canvas
    without_eval = tmp_path / "no-eval"
    without_eval.mkdir()
    assert plot_loss([e for e in HISTORY if "eval_loss" not in e], without_eval, "tiny") == ["training_loss.png"]
    assert sorted(p.name for p in without_eval.iterdir()) == ["training_loss.png"]


def test_a_plot_that_cannot_be_drawn_costs_the_plot_only(tmp_path: Path):
    gone = tmp_path / "not-there"  # the result's directory vanished: savefig cannot write
    written, error = plot_after_training(HISTORY, gone, "tiny")
    assert written == [] and error is not None and "could not be drawn" in error
