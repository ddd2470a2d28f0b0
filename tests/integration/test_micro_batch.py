"""auto_micro_batch through the real daemon: the worker is handed the largest micro-batch its GPU holds.

The stand-in worker (tests/integration/standin_worker.py) trains nothing, so this is
fast; what is checked is what the daemon wrote for the worker (RUN_DIR/spec.json)
and what the API says the attempt ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon, standin_daemon

pytestmark = pytest.mark.integration


@pytest.fixture
def roomy(tmp_path: Path):
    """A daemon on one fake 80 GiB GPU whose workers are the stand-in."""
    with standin_daemon(tmp_path / "ftq", fake_gpus="1x80GiB") as d:
        yield d


def ran(daemon: Daemon, spec: dict) -> tuple[dict, dict, dict]:
    """(the job, its attempt, the spec.json its worker read) once the job has ended."""
    job_id = daemon.submit(spec)["id"]
    job = wait_for(lambda: daemon.ended(job_id), timeout=60, what=f"job {job_id} to end")
    assert job["state"] == "succeeded", job
    (attempt,) = job["attempts"]
    return job, attempt, json.loads((Path(attempt["run_dir"]) / "spec.json").read_text())


def test_the_worker_gets_the_largest_micro_batch_and_the_attempt_says_why(roomy: Daemon):
    job, attempt, handed = ran(roomy, tiny_spec(per_device_train_batch_size=2, gradient_accumulation_steps=8))

    assert (handed["per_device_train_batch_size"], handed["gradient_accumulation_steps"]) == (16, 1)
    settings = attempt["settings"]
    assert (settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]) == (16, 1)
    assert settings["auto_micro_batch"].startswith("micro-batch 2 x 8 -> 16 x 1: the estimate at 16 is")
    assert settings["auto_micro_batch"].endswith("of 79.0 GiB free")  # 80 GiB less the 1 GiB margin
    assert (job["spec"]["per_device_train_batch_size"], job["spec"]["gradient_accumulation_steps"]) == (2, 8)
    assert "auto_micro_batch micro-batch 2 x 8 -> 16 x 1" in roomy.log()


def test_auto_micro_batch_off_runs_what_was_asked(roomy: Daemon):
    _, attempt, handed = ran(
        roomy, tiny_spec(per_device_train_batch_size=2, gradient_accumulation_steps=8, auto_micro_batch=False)
    )
    assert (handed["per_device_train_batch_size"], handed["gradient_accumulation_steps"]) == (2, 8)
    assert "auto_micro_batch" not in attempt["settings"]
