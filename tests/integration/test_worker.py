"""`python -m worker RUN_DIR` as the daemon runs it: a real subprocess training the shipped tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.spec.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM
from worker.spec.layout import CHECKPOINT_DIR, LOG_FILE, METRICS_FILE, SPEC_FILE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "configs" / "models" / "tiny-chat"
DATA_DIR = REPO / "configs" / "data"

if not (MODEL_DIR / "config.json").is_file() or not (DATA_DIR / "dataset_info.json").is_file():
    pytest.skip("the shipped tiny model or demo data is missing", allow_module_level=True)


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until condition() is truthy; return its value or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    # A line without its newline is still being written; the daemon skips it the same way.
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def kinds(run_dir: Path) -> list[str]:
    return [record["kind"] for record in records(run_dir)]


def make_run_dir(tmp_path: Path, **overrides: Any) -> Path:
    spec = {
        "name": "tiny",
        "gpus": 0,
        "model_name_or_path": str(MODEL_DIR),
        "dataset": "cs_billing",
        "dataset_dir": str(DATA_DIR),
        "cutoff_len": 256,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.01,
        "max_steps": 20,
        "logging_steps": 2,
        "save_steps": 10,
        "lr_scheduler_type": "constant",
        **overrides,
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / SPEC_FILE).write_text(json.dumps(spec))
    return run_dir


@pytest.fixture
def spawn() -> Iterator[Callable[[Path], subprocess.Popen]]:
    """Start workers the way the supervisor does, and make sure none outlives its test."""
    started: list[subprocess.Popen] = []

    def start(run_dir: Path) -> subprocess.Popen:
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": "0,1",  # the daemon's fake GPUs: no such devices on a CPU machine
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "PYTHONUNBUFFERED": "1",
        }
        with open(run_dir / LOG_FILE, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", str(run_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def log_of(run_dir: Path) -> str:
    return (run_dir / LOG_FILE).read_text(errors="replace")[-4000:]


def test_trains_twenty_steps_and_saves_the_adapter(tmp_path: Path, spawn) -> None:
    run_dir = make_run_dir(tmp_path, val_size=8, eval_strategy="steps", eval_steps=10)

    proc = spawn(run_dir)
    assert proc.wait(timeout=300) == 0, log_of(run_dir)

    found = records(run_dir)
    assert found[0]["kind"] == "start" and found[-1]["kind"] == "end", kinds(run_dir)
    start, end = found[0], found[-1]
    assert start["pid"] == proc.pid and start["device"] == "cpu" and start["current_steps"] == 0
    assert start["cuda_visible_devices"] == "0,1" and start["world_size"] == 1
    assert end["status"] == "succeeded" and end["output"] == "output" and "error" not in end
    assert end["current_steps"] == end["total_steps"] == 20
    assert end["final_loss"] > 0

    metrics = [r for r in found if r["kind"] == "metric"]
    assert [m["current_steps"] for m in metrics] == list(range(2, 21, 2))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert {"lr", "epoch", "percentage", "elapsed_time", "remaining_time", "throughput", "total_tokens"} <= set(
        metrics[0]
    )
    assert [r["current_steps"] for r in found if r["kind"] == "eval"] == [10, 20]
    assert [r["path"] for r in found if r["kind"] == "checkpoint"] == [
        "checkpoints/checkpoint-10",
        "checkpoints/checkpoint-20",
    ]
    assert all(r["timestamp"].endswith("Z") for r in found)

    output = run_dir / "output"
    assert (output / "adapter_config.json").is_file() and (output / "adapter_model.safetensors").is_file()
    assert (output / "tokenizer.json").is_file()


def test_unknown_dataset_is_bad_input_that_names_it(tmp_path: Path, spawn) -> None:
    run_dir = make_run_dir(tmp_path, dataset="cs_billing,cs_refunds")

    proc = spawn(run_dir)

    assert proc.wait(timeout=120) == EXIT_BAD_INPUT, log_of(run_dir)
    (end,) = records(run_dir)  # nothing starts on bad input
    assert end["kind"] == "end" and end["status"] == "failed"
    assert "'cs_refunds'" in end["error"] and "cs_billing" in end["error"]  # the bad name and the known ones


def test_sigterm_while_training_ends_cancelled_with_143(tmp_path: Path, spawn) -> None:
    run_dir = make_run_dir(tmp_path, max_steps=5000)
    proc = spawn(run_dir)
    wait_for(lambda: "metric" in kinds(run_dir) or proc.poll() is not None, timeout=240)
    assert proc.poll() is None, log_of(run_dir)

    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the supervisor signals the whole process group
    assert proc.wait(timeout=10) == 143, log_of(run_dir)
    took = time.monotonic() - sent

    end = records(run_dir)[-1]
    assert end["kind"] == "end" and end["status"] == "cancelled", kinds(run_dir)
    assert 2 <= end["current_steps"] < 5000
    assert took < 10
    with pytest.raises(ProcessLookupError):  # nothing of the job is left behind
        os.killpg(proc.pid, 0)


def test_sigterm_while_loading_ends_cancelled_with_143(tmp_path: Path, spawn) -> None:
    # The largest demo dataset at full length: tokenizing it keeps the worker in setup for a while.
    run_dir = make_run_dir(tmp_path, dataset="customer_service", cutoff_len=1024)
    proc = spawn(run_dir)
    wait_for(lambda: "start" in kinds(run_dir) or proc.poll() is not None, timeout=120)

    os.killpg(proc.pid, signal.SIGTERM)

    assert proc.wait(timeout=10) == 143, log_of(run_dir)
    assert kinds(run_dir)[-1] == "end"
    assert records(run_dir)[-1]["status"] == "cancelled"
    assert "metric" not in kinds(run_dir)


def test_bad_spec_reports_every_problem_at_once(tmp_path: Path, spawn) -> None:
    run_dir = make_run_dir(tmp_path, model_name_or_path=str(tmp_path / "no-model"), lora_rnk=8, learning_rate=0)

    proc = spawn(run_dir)

    assert proc.wait(timeout=120) == EXIT_BAD_INPUT, log_of(run_dir)
    error = records(run_dir)[-1]["error"]
    assert "lora_rnk" in error and "learning_rate" in error and "no-model" in error


def test_pure_bf16_trains_weights_gradients_and_adam_states_in_bf16_on_cpu(tmp_path: Path, spawn) -> None:
    import torch
    from safetensors import safe_open

    run_dir = make_run_dir(
        tmp_path, finetuning_type="full", pure_bf16=True, cutoff_len=128, max_steps=4, save_steps=4, learning_rate=1e-3
    )

    proc = spawn(run_dir)
    assert proc.wait(timeout=300) == 0, log_of(run_dir)

    end = records(run_dir)[-1]
    assert end["kind"] == "end" and end["status"] == "succeeded" and end["current_steps"] == 4
    # No fp32 master copy anywhere: the saved weights and AdamW's moments are bf16.
    with safe_open(run_dir / "output" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}
    optimizer = torch.load(run_dir / "checkpoints" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    moments = [state[key] for state in optimizer["state"].values() for key in ("exp_avg", "exp_avg_sq")]
    assert moments and {moment.dtype for moment in moments} == {torch.bfloat16}


def test_deepspeed_config_is_checked_before_anything_loads(tmp_path: Path) -> None:
    from worker.run.validate import INSTALL_DEEPSPEED, check_deepspeed

    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": ')
    zero3 = REPO / "configs" / "deepspeed" / "ds_z3_config.json"
    deepspeed_missing = importlib.util.find_spec("deepspeed") is None

    for path, pure_bf16, expected in [
        (tmp_path / "nope.json", False, "does not exist"),
        (not_object, False, "must hold a JSON object"),
        (broken, False, "is not valid JSON (line 1"),
        (zero3, True, "pure_bf16 is incompatible with DeepSpeed ZeRO-3"),
    ]:
        problems = check_deepspeed(path, pure_bf16=pure_bf16)
        assert any(expected in problem for problem in problems), problems
        assert any(INSTALL_DEEPSPEED in problem for problem in problems) == deepspeed_missing

    for name in ("ds_z0", "ds_z2", "ds_z2_offload", "ds_z3", "ds_z3_offload"):
        config = REPO / "configs" / "deepspeed" / f"{name}_config.json"
        assert len(check_deepspeed(config, pure_bf16=False)) == int(deepspeed_missing), name


# ---- a lifecycle that loses nothing: OOM, a graceful cancel with a checkpoint, a resume ----


def attempt_dir(job_dir: Path, name: str, **overrides: Any) -> Path:
    """RUN_DIR of one attempt as the daemon lays it out: its `checkpoints` a link to the job's shared directory."""
    (job_dir / name).mkdir(parents=True)
    (job_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
    run_dir = make_run_dir(job_dir / name, **overrides)
    (run_dir / CHECKPOINT_DIR).symlink_to(job_dir / CHECKPOINT_DIR, target_is_directory=True)
    return run_dir


def metric_steps(run_dir: Path) -> list[int]:
    return [r["current_steps"] for r in records(run_dir) if r["kind"] == "metric"]


def cancel_after(run_dir: Path, spawn, steps: int) -> dict[str, Any]:
    """Start a worker, SIGTERM its group once `steps` steps are logged, and return its end record."""
    proc = spawn(run_dir)
    wait_for(lambda: max(metric_steps(run_dir), default=0) >= steps or proc.poll() is not None, timeout=240)
    assert proc.poll() is None, log_of(run_dir)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == EXIT_CANCELLED, log_of(run_dir)
    return records(run_dir)[-1]


def test_an_injected_oom_ends_oom_with_the_steps_done_and_what_it_tried_to_allocate(
    tmp_path: Path, spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTQ_FAULT", "oom@step:3")  # the spawn fixture passes our environment on, as the daemon does
    run_dir = make_run_dir(tmp_path, logging_steps=1)

    proc = spawn(run_dir)

    assert proc.wait(timeout=300) == EXIT_OOM, log_of(run_dir)
    assert kinds(run_dir).count("end") == 1 and kinds(run_dir)[-1] == "end"
    end = records(run_dir)[-1]
    assert end["status"] == "oom" and end["current_steps"] == 2 and end["total_steps"] == 20
    assert end["error"].startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert end["tried_to_allocate_bytes"] == 2 << 30
    assert "peak_vram_reserved" not in end  # no CUDA here: nothing to say, rather than a made-up 0
    assert metric_steps(run_dir) == [1, 2]  # the third step never completed


def test_a_bad_ftq_fault_is_bad_input(tmp_path: Path, spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTQ_FAULT", "oom@step:three")
    run_dir = make_run_dir(tmp_path)

    proc = spawn(run_dir)

    assert proc.wait(timeout=120) == EXIT_BAD_INPUT, log_of(run_dir)
    (end,) = records(run_dir)
    assert end["status"] == "failed" and "FTQ_FAULT='oom@step:three'" in end["error"]
    assert "KIND@step:N" in end["error"]


def test_sigterm_saves_a_checkpoint_at_the_step_boundary_then_ends_cancelled(tmp_path: Path, spawn) -> None:
    # Accumulation 2: the SIGTERM may come between the micro-batches of a step; the checkpoint is still whole steps.
    run_dir = make_run_dir(tmp_path, max_steps=5000, save_steps=1000, logging_steps=1, gradient_accumulation_steps=2)

    end = cancel_after(run_dir, spawn, steps=3)

    assert end["kind"] == "end" and end["status"] == "cancelled" and kinds(run_dir).count("end") == 1
    assert kinds(run_dir)[-2:] == ["checkpoint", "end"], kinds(run_dir)
    (saved,) = [r for r in records(run_dir) if r["kind"] == "checkpoint"]
    steps = end["current_steps"]
    assert 3 <= steps < 5000 and saved["current_steps"] == steps
    assert saved["path"] == f"checkpoints/checkpoint-{steps}"
    checkpoint = run_dir / saved["path"]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == steps
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()


def test_a_new_attempt_resumes_with_half_the_micro_batch_and_gradient_checkpointing(tmp_path: Path, spawn) -> None:
    job = dict(max_steps=30, save_steps=1000, logging_steps=1)
    first = attempt_dir(tmp_path, "attempt-1", **job)
    stopped_at = cancel_after(first, spawn, steps=3)["current_steps"]

    # What the daemon's OOM retry does: the same effective batch of 4 in smaller pieces, and less memory.
    second = attempt_dir(
        tmp_path, "attempt-2", **job, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        gradient_checkpointing=True,
    )  # fmt: skip
    proc = spawn(second)
    assert proc.wait(timeout=300) == 0, log_of(second)

    start, *rest = records(second)
    assert start["kind"] == "start" and start["resumed_from_step"] == stopped_at == start["current_steps"]
    assert metric_steps(second) == list(range(stopped_at + 1, 31))
    metrics = [r for r in rest if r["kind"] == "metric"]
    assert {m["total_steps"] for m in metrics} == {30} and rest[-1]["total_steps"] == 30
    # The data position carried over: 4 examples a step out of 128, wherever the steps were made.
    assert metrics[0]["epoch"] == pytest.approx((stopped_at + 1) * 4 / 128, abs=1e-3)
    assert rest[-1]["status"] == "succeeded" and rest[-1]["current_steps"] == 30
    log = (second / LOG_FILE).read_text(errors="replace")
    assert "the same effective batch of 4, so the data position and total steps carry over" in log


def test_a_checkpoint_that_cannot_be_loaded_falls_back_to_the_one_before(tmp_path: Path, spawn) -> None:
    import torch

    first = attempt_dir(tmp_path, "attempt-1", max_steps=4, save_steps=2, logging_steps=1)
    assert spawn(first).wait(timeout=300) == 0, log_of(first)
    shared = tmp_path / CHECKPOINT_DIR
    # A whole file, so it passes the cheap checks, but the optimizer state of some other model.
    torch.save({"state": {}, "param_groups": []}, shared / "checkpoint-4" / "optimizer.pt")

    second = attempt_dir(tmp_path, "attempt-2", max_steps=6, save_steps=2, logging_steps=1)
    assert spawn(second).wait(timeout=300) == 0, log_of(second)

    starts = [r for r in records(second) if r["kind"] == "start"]
    assert [s["resumed_from_step"] for s in starts] == [4, 2]  # said before loading; corrected when it failed
    assert starts[1]["resume_error"].startswith("checkpoint-4: loading the optimizer or scheduler state failed")
    assert metric_steps(second) == [3, 4, 5, 6]
    assert "could not be loaded" in (shared / "unusable" / "checkpoint-4" / "why-unusable.txt").read_text()
    assert sorted(p.name for p in shared.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_a_run_that_diverges_fails_instead_of_saving_nan_weights(
    tmp_path: Path, spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, weight_decay: 1e308 trained to a NaN adapter that was reported as succeeded.
    monkeypatch.setenv("FTQ_FAULT", "nan@step:2")
    run_dir = make_run_dir(tmp_path, max_steps=4, logging_steps=1)

    proc = spawn(run_dir)

    assert proc.wait(timeout=180) == EXIT_FAILED, log_of(run_dir)
    end = records(run_dir)[-1]
    # The Trainer filters NaN losses out of its average (logging_nan_inf_filter): the weights tell the truth.
    assert end["status"] == "failed" and end["error"].startswith("training diverged: the training loss is")
    assert "holds NaN or infinity" in end["error"] and not (run_dir / "output").exists()
