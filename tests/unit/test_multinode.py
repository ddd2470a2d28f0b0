"""A job across nodes, the pure parts: the FTQ_ variables each node gets, its torchrun line, the one end record."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from scheduler.local.supervisor import worker_env, write_whole
from worker.launch.node_report import NodeReport, node_report_path, read_node_report, write_node_report
from worker.launch.nodes import (
    NodePlan,
    NodePlanError,
    claimed_node_rank,
    gang_rank_logs,
    node_exit_code,
    node_log_dir,
    node_plan,
    ranks_per_node,
    wait_for_node_reports,
)
from worker.launch.ranks import RankReport, decide_end, decide_gang_end, gang_rank_reports
from worker.launch.torchrun import SPEC_INVALID_ASIDE, launch, launch_plan, stand_aside, torchrun_argv
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM
from worker.spec.gate import GATE_ENV
from worker.spec.job import JobSpec
from worker.spec.layout import METRICS_FILE, RANKS_DIR

NODE_1_OF_2 = {"FTQ_NNODES": "2", "FTQ_NODE_RANK": "1", "FTQ_MASTER_ADDR": "10.0.0.5", "FTQ_MASTER_PORT": "29400"}


def node_env(**overrides: str) -> dict[str, str]:
    return {**NODE_1_OF_2, **overrides}


# ---- the node's part ----


def test_no_node_variables_is_a_job_on_one_node() -> None:
    assert node_plan({"CUDA_VISIBLE_DEVICES": "0,1"}) is None


def test_the_four_variables_give_the_nodes_part() -> None:
    plan = node_plan(node_env())
    assert plan == NodePlan(nnodes=2, node_rank=1, master_addr="10.0.0.5", master_port=29400)
    assert plan.rendezvous == "10.0.0.5:29400"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"FTQ_NNODES": "two"}, "FTQ_NNODES='two' is not a whole number of at least 1"),
        ({"FTQ_NNODES": "0"}, "FTQ_NNODES='0' is not a whole number of at least 1"),
        ({"FTQ_NODE_RANK": "-1"}, "FTQ_NODE_RANK='-1' is not a whole number of at least 0"),
        ({"FTQ_NODE_RANK": "2"}, "FTQ_NODE_RANK=2 must be below FTQ_NNODES=2"),
        ({"FTQ_MASTER_PORT": "http"}, "FTQ_MASTER_PORT='http' is not a whole number of at least 1"),
        ({"FTQ_MASTER_PORT": "70000"}, "FTQ_MASTER_PORT=70000 is not a port (1 to 65535)"),
        ({"FTQ_MASTER_ADDR": ""}, "FTQ_MASTER_ADDR='' is not a host name or address"),
        ({"FTQ_MASTER_ADDR": "host 2"}, "FTQ_MASTER_ADDR='host 2' is not a host name or address"),
    ],
)
def test_a_malformed_variable_is_named_with_what_it_must_be(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(NodePlanError, match="^" + named.replace("(", r"\(").replace(")", r"\)")):
        node_plan(node_env(**overrides))


def test_every_missing_and_malformed_variable_is_named_at_once() -> None:
    env = node_env(FTQ_NNODES="x")
    del env["FTQ_MASTER_PORT"], env["FTQ_MASTER_ADDR"]
    with pytest.raises(NodePlanError) as caught:
        node_plan(env)
    message = str(caught.value)
    assert "FTQ_MASTER_ADDR is not set" in message and "FTQ_MASTER_PORT is not set" in message
    assert "FTQ_NNODES='x'" in message


def test_the_ranks_split_evenly_over_the_nodes() -> None:
    assert ranks_per_node(8, None) == 8
    assert ranks_per_node(16, NodePlan(2, 0, "h", 1)) == 8
    assert ranks_per_node(2, NodePlan(2, 1, "h", 1)) == 1
    with pytest.raises(NodePlanError, match=r"the job's 3 GPU\(s\) do not split evenly over FTQ_NNODES=2 nodes"):
        ranks_per_node(3, NodePlan(2, 0, "h", 1))


def test_a_job_across_nodes_always_launches_even_when_its_spec_says_one_gpu() -> None:
    spec = JobSpec.model_validate({"model_name_or_path": "m", "dataset": "d", "gpus": 1})
    assert launch_plan(spec, {}) is None
    assert launch_plan(spec, node_env()) == 1  # the launcher then says why 1 GPU does not split over 2 nodes
    assert launch_plan(spec, {**node_env(), "RANK": "1"}) is None  # a rank never launches again


def test_the_node_rank_claimed_however_wrong_the_rest() -> None:
    assert claimed_node_rank(node_env(FTQ_MASTER_PORT="x")) == 1
    assert claimed_node_rank({}) == 0 and claimed_node_rank({"FTQ_NODE_RANK": "one"}) == 0


def test_each_node_keeps_its_ranks_logs_in_a_folder_of_its_own(tmp_path: Path) -> None:
    assert node_log_dir(tmp_path, None) == tmp_path
    assert node_log_dir(tmp_path, NodePlan(2, 1, "h", 1)) == tmp_path / "node1"


# ---- its torchrun ----


def test_torchrun_meets_the_other_nodes_at_node_rank_0(tmp_path: Path) -> None:
    from torch.distributed.run import get_rdzv_endpoint, parse_args

    node = NodePlan(nnodes=2, node_rank=1, master_addr="10.0.0.5", master_port=29400)
    argv = torchrun_argv(tmp_path, 4, tmp_path / "ranks" / "node1", node=node)

    assert "--standalone" not in argv
    args = parse_args(argv[3:])
    assert args.rdzv_backend == "static"  # node ranks as given, not in join order (c10d)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "4")
    assert get_rdzv_endpoint(args) == "10.0.0.5:29400"
    assert args.log_dir == str(tmp_path / "ranks" / "node1") and args.max_restarts == 0
    assert args.training_script == "worker" and args.training_script_args == [str(tmp_path)]


# ---- what a node reports ----


def test_a_node_report_reads_back_as_written(tmp_path: Path) -> None:
    tail = "rank      : 3 (local_rank: 1)\n  exitcode  : -9 (pid: 77)\n"
    report = NodeReport.from_torchrun(1, 1, tail, cancelled=False, rendezvous="h:1")
    assert report.failures == {3: -9} and report.failed
    path = node_report_path(tmp_path, 1)
    write_node_report(path, report)

    assert read_node_report(path, 1, "h:1") == report
    assert list(tmp_path.iterdir()) == [path]  # written whole: no temporary file left


def test_a_node_report_that_is_missing_garbled_or_of_another_launch_is_no_report(tmp_path: Path) -> None:
    path = node_report_path(tmp_path, 1)
    assert not read_node_report(path, 1).reported
    path.write_text("{half")
    assert not read_node_report(path, 1).reported
    write_node_report(path, NodeReport(1, exit_code=0, rendezvous="h:1"))
    assert not read_node_report(path, 1, rendezvous="h:2").reported  # an earlier run of this run dir
    assert not read_node_report(path, 2, rendezvous="h:1").reported
    path.write_text(json.dumps({"node_rank": 1, "exit_code": "zero"}))
    assert not read_node_report(path, 1).reported


def test_a_node_launchers_exit_code() -> None:
    assert node_exit_code(NodeReport(1, exit_code=0)) == 0
    assert node_exit_code(NodeReport(1, exit_code=1)) == 1
    assert node_exit_code(NodeReport(1, exit_code=-signal.SIGKILL)) == 128 + 9  # as a shell says it
    assert node_exit_code(NodeReport(1, exit_code=1, cancelled=True)) == EXIT_CANCELLED
    assert node_exit_code(NodeReport(1, error="cannot launch")) == EXIT_FAILED


def test_node_rank_0_waits_only_until_every_node_reported(tmp_path: Path) -> None:
    for r in (1, 2):
        write_node_report(node_report_path(tmp_path, r), NodeReport(r, exit_code=0, rendezvous="h:1"))
    reports = wait_for_node_reports(tmp_path, 3, "h:1", timeout=600)  # returns at once: nothing is missing
    assert [(r.node_rank, r.reported) for r in reports] == [(1, True), (2, True)]
    reports = wait_for_node_reports(tmp_path, 4, "h:1", timeout=600, give_up=lambda: True)
    assert [(r.node_rank, r.reported) for r in reports] == [(1, True), (2, True), (3, False)]


def test_every_ranks_log_is_found_by_its_global_rank(tmp_path: Path) -> None:
    for node, run_id in ((0, "none_ab12"), (1, "none_cd34")):
        for local in (0, 1):  # torchrun names the folders by local rank
            folder = tmp_path / f"node{node}" / run_id / "attempt_0" / str(local)
            folder.mkdir(parents=True)
            (folder / "stderr.log").write_text(f"node {node} local {local}")

    logs = gang_rank_logs(tmp_path, NodePlan(2, 0, "h", 1), nproc=2)

    assert {rank: path.read_text() for rank, path in logs.items()} == {
        0: "node 0 local 0",
        1: "node 0 local 1",
        2: "node 1 local 0",
        3: "node 1 local 1",
    }


# ---- the one end record ----


def said(rank: int, status: str, code: int, **fields: Any) -> RankReport:
    return RankReport(rank, {"status": status, "exit_code": code, "current_steps": 5, "total_steps": 10, **fields})


def ok(node_rank: int) -> NodeReport:
    return NodeReport(node_rank, exit_code=0)


def test_every_rank_of_every_node_succeeded() -> None:
    reports = [said(r, "succeeded", 0, output="output") for r in range(4)]
    fields, code = decide_gang_end(reports, [ok(0), ok(1)], cancelled=False)
    assert code == 0 and fields["status"] == "succeeded" and fields["output"] == "output"


def test_an_oom_on_a_rank_of_node_1_is_oom_and_names_that_rank_first() -> None:
    error = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    nodes = [NodeReport(0, exit_code=1), NodeReport(1, exit_code=1)]
    reports = [
        said(0, "failed", 1, error="RuntimeError: Connection closed by peer"),
        said(1, "failed", 1, error="RuntimeError: Connection closed by peer"),
        said(2, "succeeded", 0),
        said(3, "oom", EXIT_OOM, error=error, tried_to_allocate_bytes=2 << 30),
    ]
    fields, code = decide_gang_end(reports, nodes, cancelled=False)
    assert code == EXIT_OOM and fields["status"] == "oom" and fields["tried_to_allocate_bytes"] == 2 << 30
    assert fields["error"].startswith(f"rank 3: {error}; rank 0: RuntimeError"), fields["error"]


def test_a_rank_killed_on_node_1_is_named_from_node_1s_torchrun() -> None:
    tail = "rank      : 3 (local_rank: 1)\n  exitcode  : -9 (pid: 77)\n"
    nodes = [NodeReport(0, exit_code=1), NodeReport.from_torchrun(1, 1, tail, cancelled=False)]
    outcomes = {r: {"status": "failed", "exit_code": 1, "error": "RuntimeError: closed"} for r in (0, 1)}
    outcomes[2] = {"status": "cancelled", "exit_code": EXIT_CANCELLED}  # torchrun stopped it: not a cause

    reports = gang_rank_reports(nodes, 2, outcomes, {3: "loading shards\n"})

    assert [(r.rank, r.exit_code) for r in reports] == [(0, None), (1, None), (2, None), (3, -9)]
    fields, code = decide_gang_end(reports, nodes, cancelled=False)
    assert code == EXIT_FAILED
    assert fields["error"].startswith("rank 3 was killed by signal 9 (SIGKILL) before it could report"), fields


def test_a_node_whose_launcher_did_not_report_is_named() -> None:
    nodes = [NodeReport(0, exit_code=1), NodeReport(1, reported=False)]
    reports = [said(0, "failed", 1, error="RuntimeError: Connection closed by peer"), RankReport(1)]
    fields, code = decide_gang_end(reports, nodes, cancelled=False)
    assert code == EXIT_FAILED and fields["status"] == "failed"
    assert fields["error"] == "node 1 (its launcher) did not report; rank 0: RuntimeError: Connection closed by peer"


def test_every_rank_succeeded_though_a_node_did_not_report_is_success() -> None:
    reports = [said(0, "succeeded", 0), said(1, "succeeded", 0)]
    assert decide_gang_end(reports, [ok(0), NodeReport(1, reported=False)], cancelled=False)[1] == 0
    # rank 0's word alone is not enough when a node is missing: rank 1 might not have finished
    fields, code = decide_gang_end(
        [said(0, "succeeded", 0), RankReport(1)], [ok(0), NodeReport(1, reported=False)], False
    )
    assert code == EXIT_FAILED and fields["error"] == "node 1 (its launcher) did not report"


def test_a_node_that_could_not_launch_says_why() -> None:
    nodes = [NodeReport(0, exit_code=1), NodeReport(1, error="cannot launch across nodes: FTQ_MASTER_PORT is not set")]
    fields, code = decide_gang_end([RankReport(0), RankReport(1)], nodes, cancelled=False)
    assert code == EXIT_FAILED
    assert fields["error"] == "node 1: cannot launch across nodes: FTQ_MASTER_PORT is not set"


def test_a_cancel_that_reached_any_node_is_a_cancel() -> None:
    reports = [said(0, "failed", 1, error="RuntimeError: closed"), said(1, "cancelled", EXIT_CANCELLED)]
    nodes = [NodeReport(0, exit_code=1), NodeReport(1, exit_code=1, cancelled=True)]
    fields, code = decide_gang_end(reports, nodes, cancelled=False)
    assert code == EXIT_CANCELLED and fields["status"] == "cancelled"


def test_the_failing_torchrun_is_named_when_no_rank_said_why() -> None:
    nodes = [NodeReport(0, exit_code=1, tail="x"), NodeReport(1, exit_code=1, tail="RendezvousTimeoutError\n")]
    fields, _ = decide_gang_end([RankReport(0), RankReport(1)], [ok(0), nodes[1]], cancelled=False)
    assert fields["error"] == (
        "torchrun on node 1 exited with code 1 and no rank reported why; its output ends: RendezvousTimeoutError"
    )


def test_one_node_is_the_single_node_decision() -> None:
    tail = "rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 77)\n"
    node = NodeReport.from_torchrun(0, 1, tail, cancelled=False)
    reports = gang_rank_reports([node], 2, {0: {"status": "cancelled", "exit_code": EXIT_CANCELLED}}, {})
    assert decide_gang_end(reports, [node], cancelled=False) == decide_end(reports, 1, False, tail)


# ---- the launcher's edges ----


def test_node_rank_0_with_a_malformed_variable_ends_the_job_naming_it(tmp_path: Path, keep_signal_handlers) -> None:
    code = launch(tmp_path, 2, env=node_env(FTQ_NODE_RANK="0", FTQ_MASTER_PORT="port"))

    assert code == EXIT_FAILED
    (end,) = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert end["kind"] == "end" and end["status"] == "failed" and end["current_steps"] == 0
    assert end["error"] == "cannot launch across nodes: FTQ_MASTER_PORT='port' is not a whole number of at least 1"


def test_another_node_with_a_bad_share_leaves_it_to_node_rank_0(tmp_path: Path, keep_signal_handlers) -> None:
    code = launch(tmp_path, 3, env=node_env())  # 3 GPUs over 2 nodes

    assert code == EXIT_FAILED
    assert not (tmp_path / METRICS_FILE).exists()  # node rank 0 writes the one end record
    report = read_node_report(node_report_path(tmp_path / RANKS_DIR, 1), 1, "10.0.0.5:29400")
    assert report.reported and "do not split evenly over FTQ_NNODES=2" in report.error


def test_a_cancel_before_torchrun_on_another_node_leaves_a_cancelled_report(
    tmp_path: Path, keep_signal_handlers
) -> None:
    assert launch(tmp_path, 2, cancel_requested=lambda: True, env=node_env()) == EXIT_CANCELLED
    assert not (tmp_path / METRICS_FILE).exists()
    assert read_node_report(node_report_path(tmp_path / RANKS_DIR, 1), 1).cancelled


def test_another_node_without_a_valid_spec_stands_aside(tmp_path: Path) -> None:
    assert stand_aside(tmp_path, {}, SPEC_INVALID_ASIDE, EXIT_BAD_INPUT) is None
    assert stand_aside(tmp_path, node_env(FTQ_NODE_RANK="0"), SPEC_INVALID_ASIDE, EXIT_BAD_INPUT) is None
    assert stand_aside(tmp_path, node_env(), SPEC_INVALID_ASIDE, EXIT_BAD_INPUT) == EXIT_BAD_INPUT
    report = read_node_report(node_report_path(tmp_path / RANKS_DIR, 1), 1, "10.0.0.5:29400")
    assert report.error == SPEC_INVALID_ASIDE and not (tmp_path / METRICS_FILE).exists()


# ---- what the executor hands each node's worker ----


def test_the_node_variables_reach_the_worker_past_the_ftq_strip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTQ_NODE_RANK", "7")  # the daemon's own environment never reaches the worker
    assert "FTQ_NODE_RANK" not in worker_env("0", None)

    env = worker_env("0,1", None, extra_env={**NODE_1_OF_2, "CUDA_VISIBLE_DEVICES": "5", GATE_ENV: "no"})

    assert node_plan(env) == NodePlan(2, 1, "10.0.0.5", 29400)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env[GATE_ENV] == "stdin"  # not the executor's to change


def test_a_file_written_whole_leaves_no_temporary_behind(tmp_path: Path) -> None:
    target = tmp_path / "spec.json"
    target.write_text("old")
    write_whole(target, '{"a": 1}')
    write_whole(target, '{"a": 2}')
    assert target.read_text() == '{"a": 2}' and list(tmp_path.iterdir()) == [target]
    assert target.stat().st_mode & 0o777 == 0o644
