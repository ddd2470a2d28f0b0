"""The automatic OOM retry ladder: halve the micro-batch, then checkpoint, then halve again, then give up."""

from __future__ import annotations

from scheduler.policy.retry import memory_settings, next_after_oom, ran_spec, retry_spec

SPEC = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "gradient_checkpointing": False}


def run_ladder(spec, max_retries=3):
    tried, steps = [], []
    while True:
        decision = next_after_oom(spec, tried, len(steps), max_retries)
        if decision.overrides is None:
            return steps, decision.reason
        tried.append(memory_settings(spec))
        spec = {**spec, **decision.overrides}
        steps.append(memory_settings(spec))


def test_the_ladder_keeps_the_effective_batch_and_never_repeats():
    steps, reason = run_ladder(SPEC)
    assert [
        (s["per_device_train_batch_size"], s["gradient_accumulation_steps"], s["gradient_checkpointing"]) for s in steps
    ] == [(4, 4, False), (4, 4, True), (2, 8, True)]
    assert all(s["per_device_train_batch_size"] * s["gradient_accumulation_steps"] == 16 for s in steps)
    assert "after 3 automatic retries" in reason and "micro-batch 2 x accumulation 8" in reason


def test_nothing_smaller_to_try_gives_up_with_advice():
    steps, reason = run_ladder(
        {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "gradient_checkpointing": True}
    )
    assert steps == [] and "nothing smaller to try" in reason and "LoRA" in reason


def test_retries_can_be_turned_off():
    decision = next_after_oom(SPEC, [], 0, 0)
    assert decision.overrides is None and "after 0 automatic retries" in decision.reason


def test_settings_tried_by_hand_are_not_tried_again():
    tried = [memory_settings({**SPEC, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4})]
    decision = next_after_oom(
        {**SPEC, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4},
        tried + [memory_settings(SPEC)],
        1,
        3,
    )
    assert decision.overrides == {"gradient_checkpointing": True}


def test_a_requeue_by_hand_starts_the_ladder_over_but_skips_what_was_tried():
    before = [memory_settings({**SPEC, "per_device_train_batch_size": b, "gradient_accumulation_steps": a})
              for b, a in ((8, 2), (4, 4))]  # fmt: skip
    # The person put the micro-batch back to 8 with a shorter cutoff_len: halving comes first again.
    requeued = {**SPEC, "cutoff_len": 512}
    assert next_after_oom(requeued, before, 0, 3).overrides == {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4,
    }
    # Without a cutoff change, halving again would repeat (4, 4) with checkpointing off: that ran out already.
    assert next_after_oom(SPEC, before, 0, 3).overrides == {"gradient_checkpointing": True}


def test_the_ladder_steps_down_from_the_micro_batch_auto_micro_batch_ran():
    job = {**SPEC, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "auto_micro_batch": True}
    note = "micro-batch 8 x 4 -> 32 x 1: the estimate at 32 is 21.2 GiB of 138.0 GiB free"
    settings = {**memory_settings({**job, "per_device_train_batch_size": 32, "gradient_accumulation_steps": 1}),
                "auto_micro_batch": note}  # fmt: skip
    ran = ran_spec(job, settings)
    assert (ran["per_device_train_batch_size"], ran["gradient_accumulation_steps"]) == (32, 1)
    assert memory_settings(settings) == memory_settings(ran)  # the note is not a memory setting

    tried = [memory_settings(ran)]
    first = retry_spec(ran, next_after_oom(ran, [], 0, 3).overrides or {})
    # Half of what ran (not of what was asked), and run as it is: auto_micro_batch would grow it back to 32.
    assert (first["per_device_train_batch_size"], first["gradient_accumulation_steps"]) == (16, 2)
    assert first["auto_micro_batch"] is False
    second = retry_spec(first, next_after_oom(first, tried, 1, 3).overrides or {})
    assert memory_settings(second) == {**memory_settings(first), "gradient_checkpointing": True}
    assert memory_settings(second) not in [*tried, memory_settings(first)]


def test_an_attempt_without_settings_ran_the_jobs_spec():
    assert ran_spec(SPEC, None) == SPEC
    assert ran_spec(SPEC, {"per_device_train_batch_size": 2}) == {**SPEC, "per_device_train_batch_size": 2}
