"""worker.launch.torchrun and worker.launch.ranks, the pure parts:
whether and how to start torchrun, how a multi-rank run ended."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from worker.launch.node_report import parse_torchrun_failures, ranks_killed_by_torchrun
from worker.launch.oom import exception_is_oom, is_oom, tried_to_allocate_bytes
from worker.launch.rank_report import RANKS_DIR_ENV, is_rank, rank_report_path, write_rank_report
from worker.launch.ranks import RankReport, decide_end
from worker.launch.torchrun import launch, launch_plan, read_spec, torchrun_argv
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM
from worker.spec.exits import describe_rank_exit as describe_exit
from worker.spec.job import JobSpec
from worker.spec.layout import METRICS_FILE, RANKS_DIR, SPEC_FILE


def spec(**overrides: Any) -> JobSpec:
    return JobSpec.model_validate({"model_name_or_path": "m", "dataset": "d", **overrides})


# ---- whether to launch ----


@pytest.mark.parametrize(
    ("fields", "ranks"),
    [
        ({"gpus": 2}, 2),
        ({"gpus": 8}, 8),
        ({"gpu_ids": [3, 5]}, 2),
        ({"gpus": 1}, None),
        ({"gpus": 0}, None),
        # LLaMA-Factory refuses DeepSpeed without a distributed launch, even on one GPU
        ({"gpus": 1, "deepspeed": "/abs/ds_z3_config.json"}, 1),
        ({"gpus": 4, "deepspeed": "/abs/ds_z2_config.json"}, 4),
    ],
)
def test_launch_plan_starts_torchrun_for_several_gpus_or_deepspeed(fields: dict, ranks: int | None) -> None:
    assert launch_plan(spec(**fields), env={}) == ranks


@pytest.mark.parametrize("env", [{"LOCAL_RANK": "0"}, {"RANK": "1"}, {"RANK": "0", "LOCAL_RANK": "0"}])
def test_a_rank_never_launches_again(env: dict[str, str]) -> None:
    assert is_rank(env)
    assert launch_plan(spec(gpus=2), env) is None


def test_no_valid_spec_means_no_launch_the_recipe_reports_it(tmp_path: Path) -> None:
    assert launch_plan(None, env={}) is None
    assert read_spec(tmp_path) is None  # no spec.json
    (tmp_path / SPEC_FILE).write_text("{not json")
    assert read_spec(tmp_path) is None
    (tmp_path / SPEC_FILE).write_text(json.dumps({"model_name_or_path": "m", "dataset": "d", "gpus": 2, "lora_rnk": 8}))
    assert read_spec(tmp_path) is None
    (tmp_path / SPEC_FILE).write_text(json.dumps({"model_name_or_path": "m", "dataset": "d", "gpus": 2}))
    assert read_spec(tmp_path).gpus == 2


# ---- how to launch ----


def test_torchrun_argv_is_standalone_with_every_rank_logged(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = torchrun_argv(run_dir, 4, run_dir / "ranks", python="/venv/bin/python")

    assert argv[:3] == ["/venv/bin/python", "-m", "torch.distributed.run"]
    assert all(isinstance(arg, str) for arg in argv)  # an argv for exec, never a shell line
    assert "--standalone" in argv  # rendezvous on a port the kernel picks: concurrent jobs cannot collide
    assert "--master-port" not in argv and "--master_port" not in argv
    assert argv[argv.index("--nproc-per-node") + 1] == "4"
    assert argv[argv.index("--max-restarts") + 1] == "0"
    assert argv[argv.index("--log-dir") + 1] == str(run_dir / "ranks")
    assert argv[argv.index("--redirects") + 1] == "3" and argv[argv.index("--tee") + 1] == "3"
    assert argv[-3:] == ["-m", "worker", str(run_dir)]


def test_the_torchrun_argv_parses_as_torchrun_reads_it(tmp_path: Path) -> None:
    from torch.distributed.run import parse_args

    args = parse_args(torchrun_argv(tmp_path, 2, tmp_path / "ranks")[3:])

    assert args.standalone and args.nproc_per_node == "2" and args.module
    assert args.shutdown_timeout < 10  # below the daemon's default cancel grace: the end record gets written
    assert args.training_script == "worker" and args.training_script_args == [str(tmp_path)]


def test_a_cancel_before_torchrun_starts_ends_the_run_at_once(tmp_path: Path, keep_signal_handlers) -> None:
    (tmp_path / RANKS_DIR).mkdir()
    (tmp_path / RANKS_DIR / "rank-1.json").write_text('{"status": "succeeded"}')  # left by an earlier run here

    code = launch(tmp_path, 2, cancel_requested=lambda: True)

    assert code == EXIT_CANCELLED
    (end,) = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert end["kind"] == "end" and end["status"] == "cancelled" and end["current_steps"] == 0
    assert list((tmp_path / RANKS_DIR).iterdir()) == []  # no torchrun run dir: nothing was started


# ---- what a rank reports ----


def test_a_rank_reports_only_under_the_launcher(tmp_path: Path) -> None:
    assert rank_report_path({}) is None
    assert rank_report_path({"RANK": "1"}) is None  # plain torchrun: rank 0 writes the end record itself
    assert rank_report_path({RANKS_DIR_ENV: str(tmp_path)}) is None  # not a rank
    assert rank_report_path({RANKS_DIR_ENV: str(tmp_path), "RANK": "3", "LOCAL_RANK": "3"}) == tmp_path / "rank-3.json"


def test_a_report_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.json"
    write_rank_report(path, {"status": "succeeded", "exit_code": 0})
    write_rank_report(path, {"status": "failed", "exit_code": 1})
    assert json.loads(path.read_text()) == {"status": "failed", "exit_code": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["rank-0.json"]


# ---- reading what happened ----


@pytest.mark.parametrize(
    "text",
    [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 1; 79.15 GiB total capacity)",
        "RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "host:123:456 [1] NCCL INFO ... include/alloc.h:48 NCCL WARN Cuda failure 'out of memory'",
    ],
)
def test_oom_is_recognised_whichever_layer_says_it(text: str) -> None:
    assert is_oom(text)


@pytest.mark.parametrize(
    "text",
    ["", "RuntimeError: Connection closed by peer", "loss 2.3 at step 5", "ValueError: memory_limit must be > 0"],
)
def test_other_errors_are_not_oom(text: str) -> None:
    assert not is_oom(text)


TORCHRUN_FAILURE = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-23_11:50:31
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 13557)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-23_11:50:30
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 13558)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 13558
============================================================
"""


def test_torchrun_failure_table_gives_each_failed_rank_its_exit() -> None:
    assert parse_torchrun_failures(TORCHRUN_FAILURE) == {0: 1, 1: -9}
    assert parse_torchrun_failures("no failures here") == {}


def test_ranks_torchrun_had_to_kill_are_told_apart_from_ranks_killed_by_others() -> None:
    rank0_killed = TORCHRUN_FAILURE.replace("exitcode  : 1 (pid: 13557)", "exitcode  : -9 (pid: 13557)")
    torchrun_log = "W1123 12:06:25.253000 16912 torch/distributed/elastic/multiprocessing/api.py:1047] "
    text = f"{torchrun_log}Unable to shutdown process 13557 via 15, forcefully exiting via 9\n{rank0_killed}"
    assert parse_torchrun_failures(text) == {0: -9, 1: -9}
    assert ranks_killed_by_torchrun(text) == {0}
    assert ranks_killed_by_torchrun(TORCHRUN_FAILURE) == set()


def test_describe_exit() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by signal 9 (SIGKILL)"
    assert describe_exit(-200) == "was killed by signal 200 (an unknown signal)"


# ---- deciding the one end record ----


def said(rank: int, status: str, code: int, **fields: Any) -> RankReport:
    outcome = {"kind": "end", "status": status, "exit_code": code, "rank": rank, "current_steps": 7, **fields}
    return RankReport(rank, outcome, exit_code=code or None)


def test_all_ranks_succeeded() -> None:
    reports = [
        said(0, "succeeded", 0, total_steps=10, output="output", final_loss=1.5, peak_vram_reserved=10.0),
        said(1, "succeeded", 0, peak_vram_reserved=12.5),
    ]
    fields, code = decide_end(reports, torchrun_rc=0, cancelled=False)
    assert code == 0
    assert fields == {
        "status": "succeeded",
        "current_steps": 7,
        "total_steps": 10,
        "output": "output",
        "final_loss": 1.5,
        "peak_vram_reserved": 12.5,  # the fullest GPU
    }


def test_rank_zero_says_where_the_plots_and_tensorboard_files_went() -> None:
    plots = ["/out/training_loss.png", "/out/training_eval_loss.png"]
    reports = [
        said(0, "succeeded", 0, plots=plots, tensorboard_dir="/runs/job-1/attempt-1/tensorboard"),
        said(1, "succeeded", 0, tensorboard_dir="/runs/job-1/attempt-1/tensorboard"),
    ]
    fields, _ = decide_end(reports, torchrun_rc=0, cancelled=False)
    assert fields["plots"] == plots and fields["tensorboard_dir"] == "/runs/job-1/attempt-1/tensorboard"
    failed = [said(0, "failed", 1, error="boom", tensorboard_dir="/tb"), said(1, "failed", 1, error="boom")]
    assert decide_end(failed, torchrun_rc=1, cancelled=False)[0]["tensorboard_dir"] == "/tb"


def test_a_cancel_ends_cancelled_once_whatever_torchrun_says() -> None:
    # torchrun re-raises the SIGTERM it was sent: it exits 1 although the ranks stopped as asked.
    reports = [said(0, "cancelled", EXIT_CANCELLED), said(1, "cancelled", EXIT_CANCELLED)]
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=True)
    assert code == EXIT_CANCELLED == 143
    assert fields["status"] == "cancelled" and fields["current_steps"] == 7


def test_a_cancel_that_came_after_success_is_still_success() -> None:
    reports = [said(0, "succeeded", 0), said(1, "succeeded", 0)]
    assert decide_end(reports, torchrun_rc=0, cancelled=True)[1] == 0


def test_bad_input_is_reported_once_for_all_ranks() -> None:
    error = "deepspeed: ... install the extra with pip install 'ftq[deepspeed]'"
    reports = [said(0, "failed", EXIT_BAD_INPUT, error=error), said(1, "failed", EXIT_BAD_INPUT, error=error)]
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert code == EXIT_BAD_INPUT and fields["status"] == "failed" and fields["error"] == error


def test_oom_on_another_rank_is_oom_and_names_it() -> None:
    reports = [
        said(0, "failed", EXIT_FAILED, error="RuntimeError: NCCL communicator was aborted", timestamp="T2"),
        said(1, "oom", EXIT_OOM, error="OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB", timestamp="T1"),
    ]
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert code == EXIT_OOM and fields["status"] == "oom"
    assert fields["error"].startswith("rank 1: OutOfMemoryError: CUDA out of memory")
    assert "rank 0: RuntimeError" in fields["error"]


def test_oom_found_only_in_the_log_of_a_rank_that_aborted() -> None:
    log = "terminate called after throwing an instance of 'c10::OutOfMemoryError'\n  what():  CUDA out of memory.\n"
    reports = [said(0, "cancelled", EXIT_CANCELLED), RankReport(1, None, exit_code=-signal.SIGABRT, log_tail=log)]
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert code == EXIT_OOM
    assert fields["error"] == "rank 1 was killed by signal 6 (SIGABRT) before it could report; its log ends: " + (
        "what():  CUDA out of memory."
    )


def test_a_killed_rank_is_named_first_and_its_peers_errors_after() -> None:
    reports = [
        said(0, "failed", EXIT_FAILED, error="RuntimeError: Connection closed by peer"),
        RankReport(1, None, exit_code=-signal.SIGKILL, log_tail="INFO step 5\n"),
    ]
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert code == EXIT_FAILED and fields["status"] == "failed"
    assert fields["error"] == (
        "rank 1 was killed by signal 9 (SIGKILL) before it could report (likely the host ran out of memory, or "
        "kill -9); rank 0: RuntimeError: Connection closed by peer"
    )


def test_ranks_stopped_by_torchrun_are_not_the_cause() -> None:
    reports = [said(0, "cancelled", EXIT_CANCELLED), said(1, "failed", EXIT_FAILED, error="ValueError: bad batch")]
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert code == EXIT_FAILED and fields["error"] == "rank 1: ValueError: bad batch"


def test_a_rank_torchrun_killed_for_not_stopping_is_not_the_cause() -> None:
    # Rank 1 raised while rank 0 waited for it in the rendezvous, deaf to torchrun's SIGTERM until killed.
    reports = [
        RankReport(0, None, exit_code=-signal.SIGKILL, killed_by_torchrun=True),
        said(1, "failed", EXIT_FAILED, error="ValueError: the tokenizer has no pad token"),
    ]
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert code == EXIT_FAILED and fields["error"] == "rank 1: ValueError: the tokenizer has no pad token"

    sigtermed = [RankReport(0, None, exit_code=-signal.SIGTERM), said(1, "failed", EXIT_FAILED, error="ValueError")]
    assert decide_end(sigtermed, torchrun_rc=1, cancelled=False)[0]["error"] == "rank 1: ValueError"

    alone = [RankReport(0, None, exit_code=-signal.SIGKILL, killed_by_torchrun=True), said(1, "cancelled", 143)]
    assert decide_end(alone, torchrun_rc=1, cancelled=False)[0]["error"].startswith(
        "rank 0 was killed by torchrun when it did not stop in time"
    )


def test_torchrun_failing_before_any_rank_reported() -> None:
    tail = "Traceback (most recent call last):\n...\nRendezvousConnectionError: The connection to the C10d store failed"
    fields, code = decide_end([RankReport(0), RankReport(1)], torchrun_rc=1, cancelled=False, torchrun_tail=tail)
    assert code == EXIT_FAILED and fields["status"] == "failed"
    assert fields["error"] == (
        "torchrun exited with code 1 and no rank reported why; its output ends: "
        "RendezvousConnectionError: The connection to the C10d store failed"
    )


def test_every_rank_succeeded_but_torchrun_stumbled_after() -> None:
    reports = [said(0, "succeeded", 0), said(1, "succeeded", 0)]
    assert decide_end(reports, torchrun_rc=1, cancelled=False)[1] == 0
    # ...but not when a rank never said so
    assert decide_end([said(0, "succeeded", 0), RankReport(1, None, -9)], torchrun_rc=1, cancelled=False)[1] == 1


# ---- out of memory, said by any layer (the one test for it: worker.launch.oom.is_oom) ----


@pytest.mark.parametrize(
    "text",
    [
        "RuntimeError: CUDA driver error: out of memory",  # the caching allocator with expandable segments
        "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error "
        "(run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5\nncclSystemError: System call (e.g. socket, "
        "malloc) or external library call failed or device error.\nLast error:\nCuda failure 'out of memory'",
        "HIP out of memory. Tried to allocate 20.00 MiB",
        "RuntimeError: CUDA error: cudaErrorMemoryAllocation",
    ],
)
def test_more_layers_that_run_out_of_gpu_memory(text: str) -> None:
    assert is_oom(text)


@pytest.mark.parametrize(
    "text",
    [
        "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes",  # host memory
        "MemoryError",
        "NCCL WARN Connection closed by remote peer",
    ],
)
def test_host_memory_and_other_nccl_errors_are_not_gpu_oom(text: str) -> None:
    assert not is_oom(text)


def test_an_oom_is_found_by_class_or_message_through_the_chain() -> None:
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError, as this module sees it: by name
        pass

    assert exception_is_oom(OutOfMemoryError("whatever it says"))
    assert exception_is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    try:
        try:
            raise OutOfMemoryError("CUDA out of memory")
        except OutOfMemoryError as inner:
            raise ValueError("the library's own error while saving") from inner
    except ValueError as outer:
        assert exception_is_oom(outer)
    assert not exception_is_oom(RuntimeError("Connection closed by peer"))
    assert not exception_is_oom(ValueError("memory_limit must be > 0"))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB", 2 << 30),
        ("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity)", 20 << 20),
        ("Tried to allocate 512.00 KiB", 512 << 10),
        ("Tried to allocate 1.50 GiB", 3 << 29),
        ("Tried to allocate 96 bytes", 96),
        ("CUDA error: out of memory", None),
        ("", None),
    ],
)
def test_tried_to_allocate_bytes(text: str, size: int | None) -> None:
    assert tried_to_allocate_bytes(text) == size


def test_an_oom_on_rank_1_carries_what_it_tried_to_allocate_and_the_peaks() -> None:
    error = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total capacity of 79 GiB"
    reports = [
        said(0, "failed", EXIT_FAILED, error="RuntimeError: Connection closed by peer", total_steps=10,
             peak_vram_reserved=30.0, peak_vram_allocated=28.0),
        said(1, "oom", EXIT_OOM, error=error, tried_to_allocate_bytes=2 << 30, peak_vram_reserved=78.5,
             peak_vram_allocated=77.0),
    ]  # fmt: skip
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert code == EXIT_OOM and fields["status"] == "oom"
    assert fields["tried_to_allocate_bytes"] == 2 << 30
    assert fields["peak_vram_reserved"] == 78.5 and fields["peak_vram_allocated"] == 77.0
    assert fields["current_steps"] == 7 and fields["total_steps"] == 10


def test_an_oom_known_only_from_a_log_still_says_what_it_tried_to_allocate() -> None:
    log = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 64.00 MiB. GPU 1 has a total capacity\n"
    reports = [said(0, "cancelled", EXIT_CANCELLED), RankReport(1, None, exit_code=-signal.SIGABRT, log_tail=log)]
    fields, code = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert code == EXIT_OOM and fields["tried_to_allocate_bytes"] == 64 << 20


def test_steps_come_from_another_rank_when_rank_0_never_reported() -> None:
    reports = [RankReport(0, None, exit_code=-signal.SIGKILL), said(1, "oom", EXIT_OOM, total_steps=12)]
    fields, _ = decide_end(reports, torchrun_rc=1, cancelled=False)
    assert fields["current_steps"] == 7 and fields["total_steps"] == 12
