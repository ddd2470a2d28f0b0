"""The speed-ups on by default compute what the padded run computes: the same loss and gradient norm per step.

Real workers train the shipped tiny model for 5 steps in fp32 on the CPU, each
in one mode: padded (LLaMA-Factory's batching), padding-free, padding-free with
the chunked cross-entropy (ftq's default), and the micro-batch that
auto_micro_batch would pick on a GPU with room (8 x 1 for 4 x 2: the same
samples per optimizer step, fewer passes). Each step's loss and gradient norm
must equal the padded run's within 1e-4 relative.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_worker import DATA_DIR, MODEL_DIR
from worker.spec.layout import LOG_FILE, METRICS_FILE, SPEC_FILE

pytestmark = pytest.mark.integration

BASE: dict[str, Any] = {
    "name": "exact", "gpus": 0, "model_name_or_path": str(MODEL_DIR), "dataset": "cs_billing",
    "dataset_dir": str(DATA_DIR), "cutoff_len": 256, "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2, "learning_rate": 0.01, "lr_scheduler_type": "constant", "max_steps": 5,
    "logging_steps": 1, "save_steps": 1000, "seed": 7,
}  # fmt: skip
MODES: dict[str, dict[str, Any]] = {
    "padded": {"padding_free": False, "fused_cross_entropy": False},
    "padding-free": {"fused_cross_entropy": False},
    "padding-free + chunked loss": {},
    "micro-batch 8 x 1": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1},
}
TOLERANCE = 1e-4


def train(where: Path, spec: dict[str, Any]) -> list[dict[str, Any]]:
    where.mkdir()
    (where / SPEC_FILE).write_text(json.dumps(spec))
    with open(where / LOG_FILE, "wb") as log:
        done = subprocess.run(
            [sys.executable, "-m", "worker", str(where)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=300
        )
    assert done.returncode == 0, (where / LOG_FILE).read_text()[-3000:]
    return [json.loads(line) for line in (where / METRICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("exactness")
    return {name: train(root / str(i), {**BASE, **keys}) for i, (name, keys) in enumerate(MODES.items())}


def steps(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(r["loss"], r["grad_norm"]) for r in records if r["kind"] == "metric"]


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("mode", [m for m in MODES if m != "padded"])
def test_every_step_s_loss_and_gradient_norm_equal_the_padded_run_s(runs, mode: str):
    padded, other = steps(runs["padded"]), steps(runs[mode])

    assert len(padded) == len(other) == 5
    for step, ((loss, norm), (their_loss, their_norm)) in enumerate(zip(other, padded, strict=True), start=1):
        assert relative(loss, their_loss) <= TOLERANCE, f"step {step}: loss {loss} vs padded {their_loss}"
        assert relative(norm, their_norm) <= TOLERANCE, f"step {step}: grad norm {norm} vs padded {their_norm}"


def test_the_records_say_how_each_run_batched(runs):
    def first(name: str, kind: str) -> dict[str, Any]:
        return next(r for r in runs[name] if r["kind"] == kind)

    assert first("padded", "start")["batching"] == "padded"
    assert first("padded", "end")["pad_share"] > 0.05  # the billing chats differ in length
    assert first("padded", "end")["loss_kernel"] == "full logits"
    default = first("padding-free + chunked loss", "start")
    assert (default["batching"], default["attention"], default["loss_kernel"]) == (
        "padding-free", "ftq_packed", "chunked",
    )  # fmt: skip
    end = first("padding-free + chunked loss", "end")
    assert end["pad_share"] == 0 and end["real_tokens"] == first("padded", "end")["real_tokens"]
    assert first("micro-batch 8 x 1", "start")["micro_batch"] == 8
