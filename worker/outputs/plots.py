"""LLaMA-Factory's loss plots (plot_loss: true): training_loss.png, and training_eval_loss.png when the run evaluated.

As LLaMA-Factory draws them (src/llamafactory/extras/ploting.py, v0.9.5): one
figure per key of the trainer's log history, the logged values faint and their
TensorBoard-style moving average over them, saved at 100 dpi as
`training_{key}.png` beside the result. A key the run never logged (eval_loss
of a run without eval data) draws nothing. LLaMA-Factory plots once training
ends, before its last evaluation (do_eval), so the same history is given here.

The series and the smoothing are pure functions over plain data; drawing uses
matplotlib's Agg canvas directly (no pyplot, no display, no global state), and
matplotlib is imported only when a plot is drawn: it is an optional extra
(`pip install 'ftq[plot]'`), refused at submit when missing (worker.preflight.requirements).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The keys LLaMA-Factory's sft workflow plots (eval_accuracy needs compute_accuracy, which ftq refuses).
PLOT_KEYS = ("loss", "eval_loss")
COLOR = "#1f77b4"  # matplotlib's first colour, as LLaMA-Factory sets it
DPI = 100


def smooth(values: list[float]) -> list[float]:
    """TensorBoard's exponential moving average, its weight growing with the series' length as in LLaMA-Factory.

    The weight is 1.8 * (sigmoid(0.05 n) - 0.5): about 0.05 for 2 points, 0.4 for 20,
    approaching 0.9 for long runs, so that a short run's curve is barely smoothed.
    """
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    smoothed, last = [], values[0]
    for value in values:
        last = last * weight + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def series(history: Iterable[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every log entry that holds `key`, in the order the trainer logged them."""
    steps: list[int] = []
    values: list[float] = []
    for entry in history:
        if key in entry and isinstance(entry[key], (int, float)) and not isinstance(entry[key], bool):
            steps.append(int(entry["step"]))
            values.append(float(entry[key]))
    return steps, values


def file_name(key: str) -> str:
    """The file LLaMA-Factory gives a key's plot: training_loss.png, training_eval_loss.png."""
    return "training_{}.png".format(key.replace("/", "_"))


def plot_loss(
    history: list[Mapping[str, Any]], directory: Path, title: str, keys: Iterable[str] = PLOT_KEYS
) -> list[str]:
    """Draw each key's curve into `directory`; returns the names of the files written (keys never logged: none)."""
    written = []
    for key in keys:
        steps, values = series(history, key)
        if not values:
            log.info("plot_loss: no %s was logged, so %s is not drawn", key, file_name(key))
            continue
        _draw(steps, values, key, f"training {key} of {title}", directory / file_name(key))
        written.append(file_name(key))
        log.info("plot_loss: %s drawn from %d values", file_name(key), len(values))
    return written


def _draw(steps: list[int], values: list[float], key: str, title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure()  # matplotlib's default 6.4 x 4.8 in: 640 x 480 pixels at 100 dpi, as LLaMA-Factory's
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(111)
    axes.plot(steps, values, color=COLOR, alpha=0.4, label="original")
    axes.plot(steps, smooth(values), color=COLOR, label="smoothed")
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(key)
    axes.legend()
    figure.savefig(path, format="png", dpi=DPI)


def plot_after_training(history: list[Mapping[str, Any]], directory: Path, title: str) -> tuple[list[str], str | None]:
    """(files written, why drawing failed): a plot that cannot be drawn costs the plot, never the trained result."""
    try:
        return plot_loss(history, directory, title), None
    except Exception as exc:  # matplotlib broken, the disk full: the adapter is saved already
        log.warning("plot_loss: the loss plots could not be drawn: %s", exc, exc_info=exc)
        return [], f"the loss plots could not be drawn: {type(exc).__name__}: {exc}"[:500]
