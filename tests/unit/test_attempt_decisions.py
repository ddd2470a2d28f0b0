"""The decisions of an attempt's start and end, pure: no database, no files."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from scheduler.policy.attempt_spec import attempt_spec
from scheduler.policy.endings import EndFacts, decide_ending
from scheduler.policy.exits import Outcome
from scheduler.policy.sizing import need_of_stored
from scheduler.policy.states import JobState
from tests.helpers import REPO, tiny_spec
from worker.spec.job import JobSpec
from worker.spec.units import GIB

TINY = str(REPO / "configs/models/tiny-chat")


@dataclass(frozen=True)
class Files:
    model_config: dict[str, Any] | None
    deepspeed_config: dict[str, Any] | None = None


def tiny_config() -> dict[str, Any]:
    return json.loads((REPO / "configs/models/tiny-chat/config.json").read_text())


def stored(**fields: Any) -> dict[str, Any]:
    return JobSpec.model_validate(tiny_spec(model_name_or_path=TINY, **fields)).model_dump(
        mode="json", exclude_none=True
    )


def never(spec: JobSpec) -> Files:
    raise AssertionError("the files were read where no decision needed them")


def test_a_roomy_gpu_gets_the_largest_micro_batch_with_the_same_samples_per_step():
    runs = attempt_spec(
        stored(per_device_train_batch_size=2, gradient_accumulation_steps=8), 80 * GIB, lambda s: Files(tiny_config())
    )
    assert (runs.spec["per_device_train_batch_size"], runs.spec["gradient_accumulation_steps"]) == (16, 1)
    assert runs.note is not None and runs.note.startswith("micro-batch 2 x 8 -> 16 x 1")


def test_no_room_known_or_the_choice_off_reads_no_file_and_keeps_what_was_asked():
    spec = stored(per_device_train_batch_size=2, gradient_accumulation_steps=8)
    assert attempt_spec(spec, None, never).spec == spec
    assert attempt_spec({**spec, "auto_micro_batch": False}, 80 * GIB, never).note is None


def test_an_unreadable_config_keeps_the_micro_batch_and_says_why():
    runs = attempt_spec(stored(per_device_train_batch_size=2), 80 * GIB, lambda s: Files(None))
    assert runs.spec["per_device_train_batch_size"] == 2 and "config.json cannot be read" in (runs.note or "")


def test_a_stored_spec_without_an_estimate_needs_zero():
    assert need_of_stored(stored(), lambda s: Files(None)) == 0
    assert need_of_stored({"not": "a spec"}, never) == 0
    assert need_of_stored(stored(), lambda s: Files(tiny_config())) > 0


def facts(**changes: Any) -> EndFacts:
    base = EndFacts(
        job_id=7,
        state=JobState.RUNNING,
        spec=stored(per_device_train_batch_size=8, gradient_accumulation_steps=2),
        tried=[],
        oom_retries=0,
        node_retries=0,
        need_bytes=GIB,
        settings=None,
        peak_memory_gib=20.5,
        newest=True,
    )
    return replace(base, **changes)


def test_a_cancel_wins_over_how_the_process_ended():
    ending = decide_ending(facts(state=JobState.CANCELLING), Outcome(JobState.OOM, "CUDA out of memory"), lambda s: 0)
    assert ending.attempt_state == JobState.CANCELLED and ending.requeue is None
    assert ending.steps == (JobState.CANCELLED,) and ending.attempt_reason == "CUDA out of memory"


def test_an_oom_retries_with_half_the_micro_batch_and_at_least_the_peak():
    ending = decide_ending(facts(), Outcome(JobState.OOM, "CUDA out of memory at step 4"), lambda s: 3 * GIB)
    assert ending.attempt_state == JobState.OOM and ending.steps == (JobState.OOM,)
    assert ending.requeue is not None and ending.requeue["oom_retries"] == 1
    assert ending.requeue["need_bytes"] == int(20.5 * GIB)  # the peak, above the estimate
    assert (ending.requeue["spec"]["per_device_train_batch_size"], ending.requeue["spec"]["auto_micro_batch"]) == (
        4,
        False,
    )
    assert [t["per_device_train_batch_size"] for t in ending.job_values["tried"]] == [8]
    assert "retrying with micro-batch 8 -> 4" in ending.job_values["reason"]


def test_an_oom_past_its_budget_stays_oom_and_keeps_what_was_tried():
    spec = {**facts().spec, "oom_retry": 0}
    ending = decide_ending(facts(spec=spec), Outcome(JobState.OOM, "oom"), lambda s: 0)
    assert ending.requeue is None and "after 0 automatic retries" in ending.job_values["reason"]
    assert len(ending.job_values["tried"]) == 1


def test_a_lost_node_is_retried_by_its_budget_then_not():
    lost = Outcome(JobState.FAILED, "node lost", node_lost=True)
    again = decide_ending(facts(), lost, lambda s: 0)
    assert again.requeue == {"node_retries": 1} and "node retry 1 of 3" in again.job_values["reason"]
    spent = decide_ending(facts(node_retries=3), lost, lambda s: 0)
    assert spent.requeue is None and "budget (3) is spent" in spent.job_values["reason"]


def test_an_attempt_never_started_goes_back_as_it_was_and_an_old_one_moves_nothing():
    not_started = Outcome(JobState.FAILED, "never started", requeue=True)
    assert decide_ending(facts(state=JobState.STARTING), not_started, lambda s: 0).requeue == {}
    old = decide_ending(facts(newest=False), Outcome(JobState.OOM, "oom"), lambda s: 0)
    assert old.steps is None and old.requeue is None
