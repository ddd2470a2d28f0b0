"""Shared test helpers: polling instead of sleeps, and a job spec on the shipped tiny model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 60.0, interval: float = 0.1, what: str = "") -> T:
    """Poll until `condition()` is truthy and return its value; fail the test with `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        time.sleep(interval)


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A job on the shipped tiny model and demo data that trains in seconds on a CPU."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "model_name_or_path": "configs/models/tiny-chat",
        "dataset_dir": "configs/data",
        "dataset": "cs_billing",
        "finetuning_type": "lora",
        "lora_target": "all",
        "cutoff_len": 128,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-3,
        "max_steps": 20,
        "logging_steps": 2,
        "save_steps": 1000,
        "warmup_ratio": 0.0,
        "gpus": 1,
    }
    spec.update(overrides)
    return spec


def load_model_config(model_dir: str | Path) -> dict[str, Any]:
    """config.json of a local model directory (or the file itself), as the estimate takes it."""
    path = Path(model_dir) / "config.json" if Path(model_dir).is_dir() else Path(model_dir)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data
