"""Multi-GPU jobs as the daemon runs them: `python -m worker RUN_DIR` with `gpus: 2` starts torchrun.

On a machine without GPUs torchrun starts two CPU ranks that train with DDP over
gloo, which exercises everything of the launcher but NCCL: one `start` and one
`end` record, progress written once, both ranks' logs kept, cancels and crashes
of any rank ending the run with one record and a decoded exit.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_worker as worker_tests
from tests.integration.test_worker import REPO, kinds, log_of, make_run_dir, records, wait_for
from worker.launch.rank_report import RANKS_DIR_ENV
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM
from worker.spec.layout import CHECKPOINT_DIR, LOG_FILE, RANKS_DIR

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds a job's processes through /proc"),
]

spawn = worker_tests.spawn  # the same fixture: start as the supervisor does, and kill whatever a test leaves


def two_rank_run_dir(tmp_path: Path, **overrides: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = dict(gpus=2, cutoff_len=128, per_device_train_batch_size=2, max_steps=10, logging_steps=2)
    return make_run_dir(tmp_path, **{**spec, **overrides})


def job_processes(run_dir: Path) -> list[int]:
    """Live processes whose command line names the run dir: the launcher, torchrun and every rank."""
    needle = str(run_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():  # empty for a zombie: only the living count
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def rank_pid(run_dir: Path, rank: int) -> int | None:
    """The pid of one rank of this run, found by the environment torchrun and the launcher gave it."""
    wanted = {f"{RANKS_DIR_ENV}={run_dir / RANKS_DIR}".encode(), f"RANK={rank}".encode()}
    for pid in job_processes(run_dir):
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= environ:
            return pid
    return None


def assert_nothing_left(proc, run_dir: Path) -> None:
    with pytest.raises(ProcessLookupError):  # the launcher's process group, which the daemon watches
        os.killpg(proc.pid, 0)
    # torchrun and the ranks live in groups of their own: they must be gone too (their GPUs with them)
    wait_for(lambda: not job_processes(run_dir), timeout=10)


def test_two_ranks_train_with_ddp_and_the_run_is_recorded_once(tmp_path: Path, spawn) -> None:
    run_dir = two_rank_run_dir(tmp_path)

    proc = spawn(run_dir)
    assert proc.wait(timeout=300) == 0, log_of(run_dir)

    # One start, one record per logging step (not per rank), one checkpoint, one end.
    assert kinds(run_dir) == ["start"] + ["metric"] * 5 + ["checkpoint", "end"]
    found = records(run_dir)
    start, end = found[0], found[-1]
    assert start["world_size"] == 2 and start["cuda_visible_devices"] == "0,1" and start["device"] == "cpu"
    assert end["status"] == "succeeded" and end["output"] == "output" and "error" not in end
    assert end["current_steps"] == end["total_steps"] == 10 and end["final_loss"] > 0

    metrics = [r for r in found if r["kind"] == "metric"]
    assert [m["current_steps"] for m in metrics] == [2, 4, 6, 8, 10]
    # DDP shards the data: each step takes 2 examples on each of the 2 ranks, out of 128.
    assert metrics[-1]["epoch"] == pytest.approx(10 * 2 * 2 / 128)

    # The output is saved once, by rank 0.
    output = run_dir / "output"
    assert (output / "adapter_model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    log = (run_dir / LOG_FILE).read_text(errors="replace")
    assert log.count("saved adapter to") == 1

    # Every rank's log is kept, and teed into worker.log.
    for rank in (0, 1):
        (rank_log,) = (run_dir / RANKS_DIR).glob(f"*/attempt_0/{rank}/stderr.log")
        assert "trainable params" in rank_log.read_text()
        assert f"[rank{rank}]:" in log


def test_two_jobs_started_together_both_succeed(tmp_path: Path, spawn) -> None:
    # --standalone: each torchrun binds its rendezvous to a port the kernel picks, so they cannot collide.
    run_dirs = [two_rank_run_dir(tmp_path / name, max_steps=4) for name in ("a", "b")]

    procs = [spawn(run_dir) for run_dir in run_dirs]
    for proc, run_dir in zip(procs, run_dirs, strict=True):
        assert proc.wait(timeout=300) == 0, log_of(run_dir)

    (a_start, *_, a_end), (b_start, *_, b_end) = (records(run_dir) for run_dir in run_dirs)
    for start, end in ((a_start, a_end), (b_start, b_end)):
        assert start["kind"] == "start" and start["world_size"] == 2
        assert end["kind"] == "end" and end["status"] == "succeeded" and end["current_steps"] == 4
    assert a_start["timestamp"] < b_end["timestamp"] and b_start["timestamp"] < a_end["timestamp"]  # they overlapped


def test_sigterm_to_the_group_cancels_every_rank_with_one_record(tmp_path: Path, spawn) -> None:
    run_dir = two_rank_run_dir(tmp_path, max_steps=5000)
    proc = spawn(run_dir)
    wait_for(lambda: "metric" in kinds(run_dir) or proc.poll() is not None, timeout=240)
    assert proc.poll() is None, log_of(run_dir)

    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the supervisor signals the whole process group
    assert proc.wait(timeout=30) == EXIT_CANCELLED, log_of(run_dir)
    took = time.monotonic() - sent

    assert kinds(run_dir).count("end") == 1 and kinds(run_dir)[-1] == "end", kinds(run_dir)
    end = records(run_dir)[-1]
    assert end["status"] == "cancelled" and 2 <= end["current_steps"] < 5000
    assert took < 15
    assert_nothing_left(proc, run_dir)


def test_sigterm_as_the_ranks_meet_still_ends_cancelled_promptly(tmp_path: Path, spawn) -> None:
    # Just after `start` a rank may be waiting in the rendezvous for one that the same SIGTERM already ended.
    # Deaf to its own SIGTERM there, it is killed by torchrun after RANK_SHUTDOWN_S (5 s, under the daemon's
    # 10 s grace; torchrun's own default is 30 s), and the launcher still writes the record.
    run_dir = two_rank_run_dir(tmp_path, max_steps=5000)
    proc = spawn(run_dir)
    wait_for(lambda: "start" in kinds(run_dir) or proc.poll() is not None, timeout=240)

    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)

    assert proc.wait(timeout=60) == EXIT_CANCELLED, log_of(run_dir)
    assert time.monotonic() - sent < 15  # 5 s, plus the teardown of two processes on a busy 2-core machine
    assert kinds(run_dir).count("end") == 1 and records(run_dir)[-1]["status"] == "cancelled", kinds(run_dir)
    assert_nothing_left(proc, run_dir)


def test_a_rank_killed_fails_the_run_and_is_named(tmp_path: Path, spawn) -> None:
    run_dir = two_rank_run_dir(tmp_path, max_steps=5000)
    proc = spawn(run_dir)
    wait_for(lambda: "metric" in kinds(run_dir) or proc.poll() is not None, timeout=240)
    assert proc.poll() is None, log_of(run_dir)

    os.kill(wait_for(lambda: rank_pid(run_dir, 1), timeout=10), signal.SIGKILL)  # as the kernel's OOM killer would

    assert proc.wait(timeout=60) == EXIT_FAILED, log_of(run_dir)
    assert kinds(run_dir).count("end") == 1 and kinds(run_dir)[-1] == "end", kinds(run_dir)
    end = records(run_dir)[-1]
    assert end["status"] == "failed"
    assert end["error"].startswith("rank 1 was killed by signal 9 (SIGKILL) before it could report"), end["error"]
    assert_nothing_left(proc, run_dir)


def test_sigkill_to_the_group_takes_every_rank_with_it(tmp_path: Path, spawn) -> None:
    # The daemon's last resort when a cancel's grace runs out: the ranks must not outlive it holding GPUs.
    run_dir = two_rank_run_dir(tmp_path, max_steps=5000)
    proc = spawn(run_dir)
    wait_for(lambda: "metric" in kinds(run_dir) or proc.poll() is not None, timeout=240)
    assert proc.poll() is None and rank_pid(run_dir, 0) and rank_pid(run_dir, 1), log_of(run_dir)

    os.killpg(proc.pid, signal.SIGKILL)

    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert_nothing_left(proc, run_dir)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
def test_deepspeed_without_deepspeed_installed_is_bad_input_with_the_install_hint(tmp_path: Path, spawn) -> None:
    config = REPO / "configs" / "deepspeed" / "ds_z3_config.json"
    run_dir = two_rank_run_dir(tmp_path, deepspeed=str(config))

    proc = spawn(run_dir)

    assert proc.wait(timeout=120) == EXIT_BAD_INPUT, log_of(run_dir)
    (end,) = records(run_dir)  # nothing starts on bad input
    assert end["kind"] == "end" and end["status"] == "failed"
    assert "DeepSpeed is not installed" in end["error"] and "pip install 'ftq[deepspeed]'" in end["error"]


# ---- a lifecycle that loses nothing, with several ranks ----


def test_an_oom_on_rank_1_ends_the_whole_run_oom(tmp_path: Path, spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTQ_FAULT", "oom@step:3@rank:1")  # rank 0 is fine: it learns of it from the broken collective
    run_dir = two_rank_run_dir(tmp_path, logging_steps=1)

    proc = spawn(run_dir)

    assert proc.wait(timeout=300) == EXIT_OOM, log_of(run_dir)
    assert kinds(run_dir).count("end") == 1 and kinds(run_dir)[-1] == "end", kinds(run_dir)
    end = records(run_dir)[-1]
    assert end["status"] == "oom" and end["current_steps"] == 2
    assert end["error"].startswith("rank 1: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"), end
    assert end["tried_to_allocate_bytes"] == 2 << 30
    assert_nothing_left(proc, run_dir)


def test_a_cancel_checkpoints_every_rank_and_a_new_attempt_resumes_it(tmp_path: Path, spawn) -> None:
    (tmp_path / CHECKPOINT_DIR).mkdir()

    def attempt(name: str, **overrides: Any) -> Path:
        job = dict(max_steps=5000, save_steps=1000, logging_steps=1)
        run_dir = two_rank_run_dir(tmp_path / name, **{**job, **overrides})
        (run_dir / CHECKPOINT_DIR).symlink_to(tmp_path / CHECKPOINT_DIR, target_is_directory=True)
        return run_dir

    first = attempt("attempt-1")
    proc = spawn(first)
    wait_for(lambda: kinds(first).count("metric") >= 3 or proc.poll() is not None, timeout=240)
    assert proc.poll() is None, log_of(first)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == EXIT_CANCELLED, log_of(first)

    assert kinds(first)[-2:] == ["checkpoint", "end"] and kinds(first).count("end") == 1, kinds(first)
    saved, end = records(first)[-2:]
    steps = end["current_steps"]
    assert end["status"] == "cancelled" and saved["current_steps"] == steps
    checkpoint = first / saved["path"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }  # every rank saved its part, at the same step
    assert_nothing_left(proc, first)

    second = attempt("attempt-2", max_steps=steps + 3, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    proc = spawn(second)
    assert proc.wait(timeout=300) == 0, log_of(second)
    start = records(second)[0]
    assert start["kind"] == "start" and start["resumed_from_step"] == steps
    assert [r["current_steps"] for r in records(second) if r["kind"] == "metric"] == [steps + 1, steps + 2, steps + 3]
    assert records(second)[-1]["status"] == "succeeded"
