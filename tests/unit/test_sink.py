"""worker.outputs.sink: the records the daemon tails, read back from the same file it reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainerControl, TrainerState

from worker.outputs.sink import MetricsCallback
from worker.run.checkpoints import (
    UNUSABLE_DIR,
    Checkpoint,
    Expected,
    ResumePlan,
    TrainingShape,
    check_checkpoint,
    compare_shapes,
    list_checkpoints,
    mark_unusable,
    move_aside,
    plan_resume,
    read_shape,
)
from worker.run.resume import ShapeCallback
from worker.spec.records import MetricsSink, NullSink, append_record, hms

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


# ---- a graceful cancel leaves a checkpoint at the step boundary ----


def stopping_callback(tmp_path: Path, resumed_at: int = 0) -> tuple[MetricsCallback, list[bool]]:
    stop = [False]
    callback = MetricsCallback(MetricsSink(tmp_path / "m.jsonl"), tmp_path, should_stop=lambda: stop[0], cuda=False)
    callback.on_train_begin(SimpleNamespace(), TrainerState(global_step=resumed_at), TrainerControl())
    return callback, stop


def test_a_stop_saves_a_checkpoint_at_the_step_it_stops_at(tmp_path: Path) -> None:
    callback, stop = stopping_callback(tmp_path)
    state, control = TrainerState(global_step=6, max_steps=40), TrainerControl()
    callback.on_step_end(SimpleNamespace(), state, control)
    assert not control.should_save and not control.should_training_stop
    stop[0] = True
    callback.on_substep_end(SimpleNamespace(), state, control)  # between micro-batches: as of the last whole step
    assert control.should_training_stop and control.should_save


def test_a_stop_does_not_save_what_a_checkpoint_already_holds(tmp_path: Path) -> None:
    callback, stop = stopping_callback(tmp_path)
    stop[0] = True
    control = TrainerControl()
    callback.on_substep_end(SimpleNamespace(), TrainerState(global_step=0), control)  # no step done: nothing to keep
    assert control.should_training_stop and not control.should_save

    callback, stop = stopping_callback(tmp_path, resumed_at=12)
    stop[0] = True
    control = TrainerControl()
    callback.on_substep_end(SimpleNamespace(), TrainerState(global_step=12), control)  # the checkpoint it resumed from
    assert control.should_training_stop and not control.should_save

    callback, stop = stopping_callback(tmp_path)
    state = TrainerState(global_step=10, is_world_process_zero=True)
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path / "checkpoints")), state, TrainerControl())
    stop[0] = True
    control = TrainerControl()
    callback.on_substep_end(SimpleNamespace(), state, control)  # saved at 10 by save_steps a moment ago
    assert control.should_training_stop and not control.should_save


def test_a_cancel_during_a_save_stops_right_after_it(tmp_path: Path) -> None:
    callback, stop = stopping_callback(tmp_path)
    stop[0] = True
    control = TrainerControl()
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path / "checkpoints")), TrainerState(global_step=3), control)
    assert control.should_training_stop and not control.should_save


def test_the_checkpoint_record_names_it_through_the_run_dirs_link(tmp_path: Path) -> None:
    shared = tmp_path / "job" / "checkpoints"  # the job's directory, shared by its attempts
    shared.mkdir(parents=True)
    run_dir = tmp_path / "job" / "attempt-2"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(shared, target_is_directory=True)
    callback = MetricsCallback(MetricsSink(run_dir / "metrics.jsonl"), run_dir, cuda=False)
    state = TrainerState(global_step=8, is_world_process_zero=True)
    callback.on_save(SimpleNamespace(output_dir=str(run_dir / "checkpoints")), state, TrainerControl())
    (record,) = read_records(run_dir / "metrics.jsonl")
    assert record["path"] == "checkpoints/checkpoint-8"


# ---- which checkpoint an attempt resumes from (worker.run.checkpoints, worker.run.resume) ----

LORA = Expected("lora", lora_rank=8, deepspeed=False, world_size=1)


def save_checkpoint(directory: Path, step: int, *, rank: int = 8, full: bool = False, deepspeed: int = 0) -> Path:
    """A checkpoint-N as transformers' Trainer writes it (tiny tensors), trainer_state.json last."""
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if full:
        save_file({"w": torch.zeros(4, 4)}, str(path / "model.safetensors"))
    else:
        (path / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
        save_file({"lora_A": torch.zeros(rank, 4)}, str(path / "adapter_model.safetensors"))
    if deepspeed:
        tag = path / f"global_step{step}"
        tag.mkdir()
        for r in range(deepspeed):
            torch.save({}, tag / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        (path / "latest").write_text(tag.name)
    else:
        torch.save({"state": {}, "param_groups": []}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "train_batch_size": 4}))
    return path


def cut_short(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_the_newest_whole_checkpoint_wins_and_newer_broken_ones_are_moved_aside(tmp_path: Path) -> None:
    shared = tmp_path / "checkpoints"
    for step in (3, 9, 10, 12):
        save_checkpoint(shared, step)
    (shared / "checkpoint-12" / "trainer_state.json").unlink()  # killed mid-save
    cut_short(shared / "checkpoint-10" / "adapter_model.safetensors")
    (shared / "checkpoint-7").write_text("not a directory")
    (shared / "runs").mkdir()

    plan = plan_resume(shared, LORA, set_aside=True)

    assert plan.checkpoint == Checkpoint(shared / "checkpoint-9", 9) and plan.found_any
    (twelve, incomplete), (ten, truncated) = plan.rejected
    assert twelve.step == 12 and incomplete.startswith("incomplete: it has no readable trainer_state.json")
    assert ten.step == 10 and truncated.startswith("adapter_model.safetensors is 100 bytes, its header says")
    assert sorted(p.name for p in shared.iterdir()) == ["checkpoint-3", "checkpoint-7", "checkpoint-9", "runs",
                                                         UNUSABLE_DIR]  # fmt: skip
    aside = shared / UNUSABLE_DIR / "checkpoint-12"
    assert "cut short" in (aside / "why-unusable.txt").read_text()
    assert list_checkpoints(shared)[0].step == 9  # the next attempt sees the same


def test_a_plan_without_set_aside_moves_nothing_and_a_link_is_followed(tmp_path: Path) -> None:
    shared = tmp_path / "job" / "checkpoints"
    save_checkpoint(shared, 2)
    save_checkpoint(shared, 4)
    cut_short(shared / "checkpoint-4" / "optimizer.pt")
    run_dir = tmp_path / "job" / "attempt-2"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(shared, target_is_directory=True)

    plan = plan_resume(run_dir / "checkpoints", LORA)

    assert plan.checkpoint is not None and plan.checkpoint.step == 2
    assert plan.rejected[0][1] == "optimizer.pt is cut short or not a torch file"
    assert (shared / "checkpoint-4").is_dir()
    assert plan_resume(tmp_path / "nowhere", LORA) == ResumePlan(None) and not ResumePlan(None).found_any
    assert plan_resume(shared, LORA, below=2).checkpoint is None


@pytest.mark.parametrize(
    ("saved", "expected", "why"),
    [
        (dict(rank=16), LORA, "its adapter has rank 16, but this job's lora_rank is 8"),
        (dict(full=True), LORA, "it holds full model weights, but this job trains a LoRA adapter"),
        (dict(), Expected("full", 8, False, 1), "it holds a LoRA adapter, but this job fine-tunes the full model"),
        (dict(deepspeed=2), LORA, "it was saved by DeepSpeed; this attempt runs without DeepSpeed"),
        (dict(), Expected("lora", 8, True, 2), "it was saved without DeepSpeed; this attempt runs with DeepSpeed"),
        (dict(deepspeed=4), Expected("lora", 8, True, 2), "DeepSpeed partitioned its optimizer state over 4 ranks"),
    ],
)
def test_a_checkpoint_this_attempt_cannot_load_says_why(tmp_path: Path, saved: dict, expected: Expected, why: str):
    checkpoint = Checkpoint(save_checkpoint(tmp_path, 5, **saved), 5)
    reason = check_checkpoint(checkpoint, expected)
    assert reason is not None and reason.startswith(why)


def test_checkpoints_this_attempt_can_load(tmp_path: Path) -> None:
    assert check_checkpoint(Checkpoint(save_checkpoint(tmp_path, 1), 1), LORA) is None
    full = Checkpoint(save_checkpoint(tmp_path, 2, full=True), 2)
    assert check_checkpoint(full, Expected("full", 8, False, 4)) is None
    deepspeed = Checkpoint(save_checkpoint(tmp_path, 3, deepspeed=2), 3)
    assert check_checkpoint(deepspeed, Expected("lora", 8, True, 2)) is None


def test_a_checkpoint_that_failed_to_load_once_is_passed_over(tmp_path: Path) -> None:
    checkpoint = Checkpoint(save_checkpoint(tmp_path, 4), 4)
    mark_unusable(checkpoint, "loading the weights failed: RuntimeError: size mismatch")
    assert check_checkpoint(checkpoint, LORA) == (
        "an earlier attempt could not load it: loading the weights failed: RuntimeError: size mismatch"
    )
    assert move_aside(checkpoint, "again") == tmp_path / UNUSABLE_DIR / "checkpoint-4"
    save_checkpoint(tmp_path, 4)
    assert move_aside(Checkpoint(tmp_path / "checkpoint-4", 4), "again") == tmp_path / UNUSABLE_DIR / "checkpoint-4.2"


def test_whether_the_data_position_carries_over() -> None:
    before = TrainingShape(4, 1, 1, train_examples=128, cutoff_len=128)
    halved = TrainingShape(2, 2, 1, train_examples=128, cutoff_len=128, gradient_checkpointing=True)
    why, same = compare_shapes(before, halved, 6)
    assert same and why.startswith("micro-batch 4 x accumulation 1 before, micro-batch 2 x accumulation 2 now")
    why, same = compare_shapes(before, TrainingShape(4, 1, 2, train_examples=128), 6)
    assert not same and "effective batch changed from 4" in why and "24 were trained on" in why
    why, same = compare_shapes(before, TrainingShape(4, 1, 1, train_examples=120, cutoff_len=64), 6)
    assert not same and "120 examples where the checkpoint's had 128" in why
    assert compare_shapes(None, before, 6)[1]


def test_shape_callback_records_the_shape_and_keeps_the_batch_size_true(tmp_path: Path) -> None:
    shape = TrainingShape(2, 2, 1, train_examples=128, cutoff_len=128, gradient_checkpointing=True, deepspeed=False)
    callback = ShapeCallback(shape)
    state = TrainerState(global_step=6, is_world_process_zero=True, train_batch_size=4)  # as loaded from a checkpoint
    callback.on_train_begin(SimpleNamespace(train_batch_size=2), state, TrainerControl())
    assert state.train_batch_size == 2

    path = save_checkpoint(tmp_path, 6)
    mark_unusable(Checkpoint(path, 6), "an earlier save here could not be loaded")
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, TrainerControl())
    assert read_shape(path) == shape
    assert check_checkpoint(Checkpoint(path, 6), Expected("lora", 8, False, 1)) is None
