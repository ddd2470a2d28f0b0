"""The store's OOM retry on a real SQLite database (migrated by Alembic): no daemon, no processes.

A CUDA out-of-memory needs a GPU, and on a CPU no attempt has a peak; here the
attempt's peak is set as the tailer would set it from the worker's records, so
that raising the next attempt's memory requirement to it can be checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from scheduler.attempts import begin_attempt, finish_attempt
from scheduler.gpus.fake import FakeProbe
from scheduler.policy.exits import Outcome
from scheduler.policy.placement import Placement
from scheduler.policy.states import JobState
from server.db.models import Attempt, Job
from server.db.store import SqlStore
from server.services import jobs
from server.services.admission import estimate_need
from server.services.machine import Machine
from server.services.paths import read_spec_files
from server.settings import Settings
from tests.helpers import REPO, tiny_spec
from worker.spec.exits import EXIT_OOM
from worker.spec.job import JobSpec
from worker.spec.units import GIB


def submit(store: SqlStore, **overrides) -> int:
    spec = JobSpec.model_validate(tiny_spec(model_name_or_path=str(REPO / "configs/models/tiny-chat"), **overrides))
    with Session(store.engine) as session:
        job = Job(
            name=spec.name,
            state=JobState.QUEUED.value,
            gpus=spec.gpus,
            spec=spec.model_dump(mode="json", exclude_none=True),
            need_bytes=GIB,
        )
        session.add(job)
        session.commit()
        assert job.id is not None
        return job.id


def run_out_of_memory(
    store: SqlStore, job_id: int, tmp_path: Path, peak_gib: float, room_bytes: int | None = None
) -> None:
    """One attempt of the job that reached `peak_gib` and ended with CUDA out of memory."""
    started = begin_attempt(store, Placement(job_id, ("GPU-0",), "0", room_bytes), tmp_path / "runs", read_spec_files)
    assert started is not None
    with Session(store.engine) as session:
        values = {"state": JobState.RUNNING.value, "peak_memory_gib": peak_gib}
        session.execute(update(Attempt).where(col(Attempt.id) == started.attempt_id).values(**values))
        session.execute(update(Job).where(col(Job.id) == job_id).values(state=JobState.RUNNING.value))
        session.commit()
    finish_attempt(
        store, started.attempt_id, Outcome(JobState.OOM, "CUDA out of memory at step 4"), EXIT_OOM, "", read_spec_files
    )


def job_of(store: SqlStore, job_id: int) -> Job:
    with Session(store.engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_an_oom_requeues_with_half_the_micro_batch_and_at_least_the_peak_it_reached(store, tmp_path):
    job_id = submit(store, per_device_train_batch_size=8, gradient_accumulation_steps=2)

    run_out_of_memory(store, job_id, tmp_path, peak_gib=20.5)

    job = job_of(store, job_id)
    assert job.state == JobState.QUEUED.value
    assert (job.spec["per_device_train_batch_size"], job.spec["gradient_accumulation_steps"]) == (4, 4)
    assert job.need_bytes == int(20.5 * GIB) > estimate_need(job.spec)  # the peak, not the smaller estimate
    assert job.oom_retries == 1
    assert [t["per_device_train_batch_size"] for t in job.tried] == [8]
    assert "retrying with micro-batch 8 -> 4, gradient accumulation 2 -> 4" in (job.reason or "")
    assert store.leased_resources() == set()  # the retry waits for placement like any queued job


def test_the_ladder_ends_in_oom_saying_what_was_tried_and_never_repeats_settings(store, tmp_path):
    job_id = submit(store, per_device_train_batch_size=2, gradient_accumulation_steps=1)

    seen = []
    for _ in range(4):
        spec = job_of(store, job_id).spec
        seen.append({k: spec[k] for k in ("per_device_train_batch_size", "gradient_checkpointing")})
        run_out_of_memory(store, job_id, tmp_path, peak_gib=3.0)
        if job_of(store, job_id).state != JobState.QUEUED.value:
            break

    job = job_of(store, job_id)
    assert seen == [
        {"per_device_train_batch_size": 2, "gradient_checkpointing": False},
        {"per_device_train_batch_size": 1, "gradient_checkpointing": False},
        {"per_device_train_batch_size": 1, "gradient_checkpointing": True},
    ]
    assert job.state == JobState.OOM.value and job.oom_retries == 2
    assert "nothing smaller to try" in (job.reason or "") and "micro-batch 2 x accumulation 1" in (job.reason or "")


def test_oom_retry_off_leaves_the_job_oom(store, tmp_path):
    job_id = submit(store, oom_retry=False)

    run_out_of_memory(store, job_id, tmp_path, peak_gib=3.0)

    job = job_of(store, job_id)
    assert job.state == JobState.OOM.value and job.oom_retries == 0
    assert "after 0 automatic retries" in (job.reason or "")


def test_a_requeue_by_hand_gives_automatic_retries_afresh_and_never_repeats_what_ran_out(store, tmp_path):
    job_id = submit(store, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    for _ in range(3):  # 2 -> 1 -> gradient checkpointing -> gives up
        run_out_of_memory(store, job_id, tmp_path, peak_gib=3.0)
    assert job_of(store, job_id).state == JobState.OOM.value and job_of(store, job_id).oom_retries == 2
    machine = Machine(FakeProbe("2x24GiB").snapshot(), holders={}, cpu_slots=1, margin_bytes=GIB)

    with Session(store.engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        overrides = {"per_device_train_batch_size": 2, "gradient_checkpointing": False, "cutoff_len": 64}
        jobs.requeue(session, job, overrides, Settings(data_dir=tmp_path, input_dirs=[REPO]), machine)
    assert job_of(store, job_id).oom_retries == 0
    run_out_of_memory(store, job_id, tmp_path, peak_gib=3.0)

    job = job_of(store, job_id)
    assert job.state == JobState.QUEUED.value and job.oom_retries == 1
    assert (job.spec["per_device_train_batch_size"], job.spec["cutoff_len"]) == (1, 64)
    assert len(job.tried) == 4  # the three that ran out before the requeue, and the one after it


def attempts_of(store: SqlStore, job_id: int) -> list[Attempt]:
    with Session(store.engine) as session:
        return list(session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number))))


def batch(settings: dict) -> tuple[int, int]:
    return settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]


def test_a_roomy_gpu_runs_the_largest_micro_batch_with_the_same_samples_per_step(store, tmp_path):
    job_id = submit(store, per_device_train_batch_size=2, gradient_accumulation_steps=8)

    started = begin_attempt(store, Placement(job_id, ("GPU-0",), "0", 80 * GIB), tmp_path / "runs", read_spec_files)

    assert started is not None and batch(started.spec) == (16, 1)  # what the worker is handed
    (attempt,) = attempts_of(store, job_id)
    assert attempt.settings is not None and batch(attempt.settings) == (16, 1)
    assert attempt.settings["auto_micro_batch"].startswith("micro-batch 2 x 8 -> 16 x 1: the estimate at 16 is")
    assert batch(job_of(store, job_id).spec) == (2, 8)  # the job still says what was asked


@pytest.mark.parametrize(
    ("fields", "room", "note"),
    [
        (dict(auto_micro_batch=False), 80 * GIB, None),
        ({}, None, None),  # the GPUs' free memory unknown
        (dict(gpus=0), None, None),
        (dict(deepspeed="configs/deepspeed/ds_z2_config.json"), 80 * GIB, "kept: DeepSpeed's config owns"),
        (dict(train_sampling_strategy="group_by_length"), 80 * GIB, "kept: group_by_length"),
    ],
)
def test_where_auto_micro_batch_has_no_say_the_attempt_runs_what_was_asked(store, tmp_path, fields, room, note):
    job_id = submit(store, per_device_train_batch_size=2, gradient_accumulation_steps=8, **fields)
    resource = ("cpu-0", "") if fields.get("gpus") == 0 else ("GPU-0", "0")
    started = begin_attempt(
        store, Placement(job_id, (resource[0],), resource[1], room), tmp_path / "runs", read_spec_files
    )
    assert started is not None and started.spec == job_of(store, job_id).spec
    (attempt,) = attempts_of(store, job_id)
    assert attempt.settings is not None and batch(attempt.settings) == (2, 8)
    assert (attempt.settings.get("auto_micro_batch") or "").startswith(note or "") and (
        note is not None or "auto_micro_batch" not in attempt.settings
    )


def test_an_oom_of_an_auto_chosen_micro_batch_steps_down_from_it_and_turns_the_choice_off(store, tmp_path):
    job_id = submit(store, per_device_train_batch_size=2, gradient_accumulation_steps=8)

    run_out_of_memory(store, job_id, tmp_path, peak_gib=70.0, room_bytes=80 * GIB)  # ran 16 x 1

    job = job_of(store, job_id)
    assert job.state == JobState.QUEUED.value and batch(job.spec) == (8, 2)
    assert job.spec["auto_micro_batch"] is False  # else the next attempt would grow back to 16
    assert [batch(t) for t in job.tried] == [(16, 1)]
    assert "micro-batch 16 -> 8, gradient accumulation 1 -> 2" in (job.reason or "")
    run_out_of_memory(store, job_id, tmp_path, peak_gib=70.0, room_bytes=80 * GIB)
    second = attempts_of(store, job_id)[1]
    assert (
        second.settings is not None and batch(second.settings) == (8, 2) and "auto_micro_batch" not in second.settings
    )
    job = job_of(store, job_id)
    assert batch(job.spec) == (8, 2) and job.spec["gradient_checkpointing"] is True  # the ladder's next rung


def test_a_measured_peak_above_the_estimate_keeps_the_next_choice_smaller(store, tmp_path):
    job_id = submit(store, per_device_train_batch_size=2, gradient_accumulation_steps=8)
    unmeasured = begin_attempt(store, Placement(job_id, ("GPU-0",), "0", GIB), tmp_path / "runs", read_spec_files)
    assert unmeasured is not None and batch(unmeasured.spec) == (16, 1)
    # That attempt peaked far above the estimate at 16 and was then cancelled.
    with Session(store.engine) as session:
        session.execute(update(Attempt).where(col(Attempt.id) == unmeasured.attempt_id).values(peak_memory_gib=1.5))
        session.execute(update(Job).where(col(Job.id) == job_id).values(state=JobState.CANCELLING.value))
        session.commit()
    finish_attempt(
        store, unmeasured.attempt_id, Outcome(JobState.CANCELLED, "cancelled on request"), None, "", read_spec_files
    )
    with Session(store.engine) as session:
        session.execute(update(Job).where(col(Job.id) == job_id).values(state=JobState.QUEUED.value))
        session.commit()

    # The tiny model's estimate is ~0.59 GiB at 16 and ~0.55 GiB at 8 (mostly the CUDA context): x2.54 by the
    # peak, 16 needs 1.5 GiB and 8 needs 1.39 GiB.
    started = begin_attempt(
        store, Placement(job_id, ("GPU-0",), "0", int(1.45 * GIB)), tmp_path / "runs", read_spec_files
    )

    assert started is not None and batch(started.spec) == (8, 2)
    note = attempts_of(store, job_id)[1].settings["auto_micro_batch"]  # type: ignore[index]
    assert note.startswith("micro-batch 2 x 8 -> 8 x 2:") and "from the peak measured at 16" in note
