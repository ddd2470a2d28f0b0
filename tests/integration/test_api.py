"""The API's answers to bad input and bad requests: status, and a sentence naming the field and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, tiny_spec
from tests.integration.daemon import Daemon

pytestmark = pytest.mark.integration


def errors_by_field(response) -> dict[str, str]:
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def test_bad_specs_get_422_naming_every_field_and_lose_nothing(daemon: Daemon):
    unknown = daemon.http.post("/jobs", json=tiny_spec(lora_rnak=16))
    assert unknown.status_code == 422
    assert "did you mean lora_rank?" in errors_by_field(unknown)["lora_rnak"]

    not_here = daemon.http.post("/jobs", json=tiny_spec(quantization_bit=4))
    assert not_here.status_code == 422 and "pip install 'ftq[gpu]'" in errors_by_field(not_here)["quantization_bit"]

    wrong_type = daemon.http.post("/jobs", json=tiny_spec(per_device_train_batch_size=0, finetuning_type="qlora"))
    fields = errors_by_field(wrong_type)
    assert wrong_type.status_code == 422 and {"per_device_train_batch_size", "finetuning_type"} <= set(fields)

    missing = daemon.http.post("/jobs", json=tiny_spec(model_name_or_path="configs/models/nope", dataset="nope"))
    fields = errors_by_field(missing)
    assert missing.status_code == 422
    assert "configs/models/nope" in fields["model_name_or_path"] and "not a directory" in fields["model_name_or_path"]
    assert "'nope' is not in" in fields["dataset"] and "cs_billing" in fields["dataset"]

    escape = daemon.http.post("/jobs", json=tiny_spec(model_name_or_path="/etc", dataset_dir="configs/../../", gpus=3))
    fields = errors_by_field(escape)
    assert "at most 2" in fields["gpus"]
    assert "outside the directories this daemon may read" in fields["model_name_or_path"]
    assert "FTQ_INPUT_DIRS" in fields["dataset_dir"]

    too_big = daemon.http.post("/jobs", json=tiny_spec(gpus=3))
    assert too_big.status_code == 422 and "at most 2" in errors_by_field(too_big)["gpus"]

    assert daemon.http.get("/jobs").json()["count"] == 0


def test_404_409_and_filters(daemon: Daemon):
    missing = daemon.http.get("/jobs/12345")
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    assert daemon.http.post("/jobs/12345/cancel").status_code == 404
    assert daemon.http.get("/jobs", params={"state": "sleeping"}).status_code == 422
    job = daemon.submit(tiny_spec(gpus=0, max_steps=100_000))
    assert job["state"] == "queued" and job["spec"]["model_name_or_path"] == str(REPO / "configs/models/tiny-chat")
    cancelled = daemon.http.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.json()["state"] in ("cancelling", "cancelled"), cancelled.text


def test_token_is_required_when_set(tmp_path):
    daemon = Daemon(tmp_path / "ftq", api_token="s3cret").start()
    try:
        assert daemon.http.get("/healthz").status_code == 200
        refused = daemon.http.get("/jobs")
        assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
        ok = daemon.http.get("/jobs", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    finally:
        daemon.stop()


def test_a_bad_setting_stops_the_daemon_with_its_name(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", "1"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "FTQ_CPU_SLOTS": "many", "FTQ_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "FTQ_CPU_SLOTS" in result.stderr


def test_the_daemon_never_imports_torch():
    code = (
        "import sys, server.app, server.cli.main, server.serve, server.cli.demo, scheduler.loop;"
        "from server.app import create_app; create_app();"
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules];"
        "assert not bad, bad; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
