"""The automatic OOM retry ladder: halve the micro-batch, then checkpoint, then halve again, then give up."""

from __future__ import annotations

from scheduler.retry import memory_settings, next_after_oom

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
