"""worker.sink: the records the daemon tails, read back from the same file it reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from worker.records import append_record
from worker.sink import MetricsCallback, MetricsSink, NullSink, hms

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HMS = re.compile(r"^\d+:\d\d:\d\d$")


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_record_is_one_flushed_json_line_without_nulls(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    sink = MetricsSink(path)

    sink.write("metric", current_steps=1, loss=2.5, grad_norm=None)
    # Read before close: a tailing daemon must see the line as soon as it is written.
    (first,) = read_records(path)
    sink.write("end", status="succeeded")
    sink.close()

    assert first["kind"] == "metric" and first["current_steps"] == 1 and first["loss"] == 2.5
    assert "grad_norm" not in first
    assert TIMESTAMP.match(first["timestamp"])
    assert path.read_text().count("\n") == 2
    assert read_records(path)[1]["status"] == "succeeded"


def test_sink_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "start"}\n')
    sink = MetricsSink(path)
    sink.write("end", status="failed")
    sink.close()
    assert [r["kind"] for r in read_records(path)] == ["start", "end"]


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00:00"), (61.9, "0:01:01"), (3 * 3600 + 5, "3:00:05"),
                                               (30 * 3600, "30:00:00")])  # fmt: skip
def test_hms(seconds: float, text: str) -> None:
    assert hms(seconds) == text


@pytest.fixture
def callback_env(tmp_path: Path) -> tuple[MetricsCallback, TrainerState, SimpleNamespace, Path]:
    sink = MetricsSink(tmp_path / "metrics.jsonl")
    callback = MetricsCallback(sink, tmp_path, cuda=False)
    state = TrainerState(max_steps=20, is_world_process_zero=True)
    args = SimpleNamespace(output_dir=str(tmp_path / "checkpoints"))
    callback.on_train_begin(args, state, TrainerControl())
    return callback, state, args, tmp_path


def test_metric_record_has_llamafactory_fields(callback_env) -> None:
    callback, state, args, run_dir = callback_env
    state.global_step, state.epoch, state.num_input_tokens_seen = 5, 0.25, 1234
    callback.start_time -= 10  # as if the five steps took ten seconds

    callback.on_log(args, state, TrainerControl(), logs={"loss": 2.0, "learning_rate": 1e-4, "grad_norm": 0.5})

    (record,) = read_records(run_dir / "metrics.jsonl")
    assert record["kind"] == "metric"
    assert record["current_steps"] == 5 and record["total_steps"] == 20
    assert record["loss"] == 2.0 and record["lr"] == 1e-4 and record["grad_norm"] == 0.5
    assert record["epoch"] == 0.25 and record["percentage"] == 25.0
    assert record["elapsed_time"] == "0:00:10"
    assert record["remaining_time"] == "0:00:30"  # 2 s a step x 15 steps left
    assert record["total_tokens"] == 1234
    assert 120 < record["throughput"] <= 123.4
    assert HMS.match(record["elapsed_time"])
    assert "vram_allocated" not in record and "vram_reserved" not in record  # no CUDA in use


def test_logs_without_loss_write_no_metric_but_keep_the_final_train_loss(callback_env) -> None:
    callback, state, args, run_dir = callback_env
    callback.on_log(args, state, TrainerControl(), logs={"eval_loss": 1.0})
    callback.on_log(args, state, TrainerControl(), logs={"train_loss": 1.5, "train_runtime": 3.0})
    assert not (run_dir / "metrics.jsonl").read_text()
    assert callback.final_loss == 1.5


def test_eval_and_checkpoint_records(callback_env) -> None:
    callback, state, args, run_dir = callback_env
    state.global_step, state.epoch = 10, 0.5

    callback.on_evaluate(args, state, TrainerControl(), metrics={"eval_loss": 1.75, "eval_runtime": 0.1})
    callback.on_save(args, state, TrainerControl())

    evaluation, checkpoint = read_records(run_dir / "metrics.jsonl")
    assert evaluation == {**evaluation, "kind": "eval", "eval_loss": 1.75, "current_steps": 10, "total_steps": 20,
                          "epoch": 0.5}  # fmt: skip
    assert checkpoint == {**checkpoint, "kind": "checkpoint", "current_steps": 10, "path": "checkpoints/checkpoint-10"}


def test_only_rank_zero_writes(callback_env) -> None:
    callback, state, args, run_dir = callback_env
    state.is_world_process_zero = False
    state.global_step = 1
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0, "learning_rate": 1e-3})
    callback.on_evaluate(args, state, TrainerControl(), metrics={"eval_loss": 1.0})
    callback.on_save(args, state, TrainerControl())
    assert not (run_dir / "metrics.jsonl").read_text()


def test_stop_request_stops_training_at_the_next_step(tmp_path: Path) -> None:
    stop = False
    callback = MetricsCallback(MetricsSink(tmp_path / "m.jsonl"), tmp_path, should_stop=lambda: stop, cuda=False)
    control = TrainerControl()
    state = TrainerState(max_steps=3)

    callback.on_step_end(SimpleNamespace(), state, control)
    assert not control.should_training_stop
    stop = True
    callback.on_substep_end(SimpleNamespace(), state, control)
    assert control.should_training_stop


def test_append_record_never_glues_onto_a_line_a_killed_writer_left(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "start"}\n{"kind": "metric", "current_st')  # rank 0 killed mid-line

    append_record(path, "end", status="failed", error="rank 0 was killed", output=None)

    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 3 and all(line.endswith("\n") for line in lines)
    end = json.loads(lines[-1])
    assert end["kind"] == "end" and end["status"] == "failed" and "output" not in end
    assert TIMESTAMP.match(end["timestamp"])


def test_append_record_to_a_clean_or_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_record(path, "end", status="cancelled")
    append_record(path, "end", status="cancelled")
    assert [r["status"] for r in read_records(path)] == ["cancelled", "cancelled"]


def test_ranks_other_than_zero_write_nothing(tmp_path: Path) -> None:
    sink = NullSink()
    callback = MetricsCallback(sink, tmp_path, cuda=False)
    state = TrainerState(max_steps=20, is_world_process_zero=True)
    state.global_step = 2
    callback.on_log(SimpleNamespace(), state, TrainerControl(), logs={"loss": 1.0})
    sink.write("end", status="succeeded")
    sink.close()
    assert list(tmp_path.iterdir()) == []
