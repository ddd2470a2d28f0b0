"""Admission and placement through the real daemon: estimates, never-fits, pinned GPUs, wait reasons."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.daemon import Daemon

pytestmark = pytest.mark.integration

CONFIGS = REPO / "tests/fixtures/model_configs"


@pytest.fixture
def models(tmp_path):
    """Directories holding real models' config.json (no weights: admission reads only the config)."""
    for config in CONFIGS.glob("*.json"):
        (tmp_path / "models" / config.stem).mkdir(parents=True)
        shutil.copy(config, tmp_path / "models" / config.stem / "config.json")
    return tmp_path / "models"


@pytest.fixture
def machine(tmp_path, models):
    d = Daemon(tmp_path / "ftq", fake_gpus="2x24GiB", input_dirs=f"{REPO}{os.pathsep}{models}").start()
    yield d
    d.stop()


def test_estimate_reports_the_breakdown_and_where_it_fits(machine: Daemon):
    response = machine.http.post("/estimate", json=tiny_spec())
    body = response.json()
    assert response.status_code == 200, body
    assert body["fits_ever"] and body["fits_now"]["cuda_visible_devices"] == "0"
    parts = {"weights", "gradients", "optimizer", "activations", "logits", "overhead"}
    assert set(body["estimate"]) >= {f"{part}_gib" for part in parts}
    assert 0 < body["per_gpu_gib"] < 24 and body["problems"] == []


def test_a_job_that_can_never_fit_is_refused_with_the_numbers_and_the_fixes(machine: Daemon, models):
    spec = tiny_spec(
        model_name_or_path=str(models / "llama-3.2-1b"),
        finetuning_type="full",
        pure_bf16=True,
        bf16=True,
        per_device_train_batch_size=8,
        cutoff_len=1024,
    )
    response = machine.http.post("/jobs", json=spec)
    assert response.status_code == 422
    message = response.json()["errors"][0]["message"]
    assert "can never fit" in message and "24.0 GiB" in message
    assert "gradient_checkpointing: true" in message
    assert machine.http.get("/jobs").json()["count"] == 0
    estimate = machine.http.post("/estimate", json=spec).json()
    assert not estimate["fits_ever"] and estimate["fits_now"] is None and estimate["suggestions"]
    assert estimate["per_gpu_gib"] > 24


def test_pinned_gpus_must_exist_and_a_waiting_job_says_why(machine: Daemon):
    missing = machine.http.post("/jobs", json=tiny_spec(gpu_ids=[5]))
    assert missing.status_code == 422 and "GPU 5 does not exist" in missing.json()["errors"][0]["message"]

    holder = machine.submit(tiny_spec(name="holder", gpus=2, max_steps=100_000))["id"]
    wait_for(lambda: machine.job(holder)["state"] == "running", timeout=120, what="the 2-GPU job to run")
    pinned = machine.submit(tiny_spec(name="pinned", gpu_ids=[1]))["id"]
    waiting = machine.job(pinned)
    assert waiting["state"] == "queued"
    assert (
        waiting["waiting"] == f"waiting: pinned to GPU 1 with {waiting['need_gib'] + 1:.1f} GiB free; "
        f"GPU 1 is held by job {holder}"
    )
    listed = machine.http.get("/jobs", params={"state": "queued"}).json()["data"]
    assert listed[0]["waiting"] == waiting["waiting"]
    first = machine.job(holder)["attempts"][0]
    assert json.loads(json.dumps(first["resources"])) and first["cuda_visible_devices"] == "0,1"
    machine.http.post(f"/jobs/{holder}/cancel")
    started = wait_for(lambda: machine.job(pinned)["attempts"], timeout=60, what="the pinned job to start")
    assert started[0]["cuda_visible_devices"] == "1"
    machine.http.post(f"/jobs/{pinned}/cancel")
    wait_for(lambda: machine.ended(pinned), timeout=60, what="the pinned job to be cancelled")
