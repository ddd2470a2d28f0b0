"""The micro-batch ftq picks for an attempt: the largest that fits, never below the asked one, same samples per step."""

from __future__ import annotations

from scheduler.policy.micro_batch import MicroBatchChoice, candidates, choose_micro_batch, divisors
from worker.spec.units import GIB


def linear(fixed_gib: float, per_sample_gib: float):
    """An estimate of fixed memory plus a share per sample of the micro-batch, as the real one roughly is."""
    return lambda d: int((fixed_gib + per_sample_gib * d) * GIB)


def test_candidates_are_divisors_of_the_samples_per_step_from_the_asked_micro_batch_up():
    assert divisors(12) == [1, 2, 3, 4, 6, 12] and divisors(1) == [1] and divisors(49) == [1, 7, 49]
    assert candidates(8, 4) == [8, 16, 32]
    assert candidates(6, 2) == [6, 12]
    assert candidates(3, 8) == [3, 4, 6, 8, 12, 24]  # 5 would break micro x accumulation = 24
    assert candidates(4, 1) == [4]


def test_the_largest_that_fits_keeps_micro_batch_times_accumulation():
    choice = choose_micro_batch(8, 4, linear(2, 0.6), room_bytes=int(138 * GIB))
    assert (choice.micro_batch, choice.accumulation) == (32, 1)
    assert choice.reason == "micro-batch 8 x 4 -> 32 x 1: the estimate at 32 is 21.2 GiB of 138.0 GiB free"
    middle = choose_micro_batch(8, 4, linear(2, 0.6), room_bytes=int(15 * GIB))  # 16 is 11.6 GiB, 32 is 21.2
    assert (middle.micro_batch, middle.accumulation) == (16, 2)
    odd = choose_micro_batch(3, 8, linear(1, 1.0), room_bytes=int(9.5 * GIB))
    assert (odd.micro_batch, odd.accumulation) == (8, 3)


def test_keeps_the_asked_one_when_nothing_larger_fits_and_never_goes_below_it():
    kept = choose_micro_batch(8, 4, linear(5, 2.5), room_bytes=int(40 * GIB))  # 16 needs 45 GiB
    assert kept == MicroBatchChoice(8, 4, "kept 8 x 4: 16 would need 45.0 GiB of 40.0 GiB free")
    # Even when the asked one does not fit by the estimate: going smaller is the OOM ladder's to decide.
    too_big = choose_micro_batch(8, 4, linear(50, 1), room_bytes=int(40 * GIB))
    assert (too_big.micro_batch, too_big.accumulation) == (8, 4)
    alone = choose_micro_batch(8, 1, linear(1, 0.1), room_bytes=int(80 * GIB))
    assert alone == MicroBatchChoice(8, 1, "kept 8 x 1: no larger micro-batch keeps 8 samples per step")


def test_a_measured_peak_above_the_estimate_corrects_every_candidate():
    need = linear(2, 0.6)  # 8 -> 6.8 GiB, 16 -> 11.6 GiB, 32 -> 21.2 GiB
    assert choose_micro_batch(8, 4, need, room_bytes=int(22 * GIB)).micro_batch == 32
    measured = (8, int(6.8 * 1.5 * GIB))  # the job really needed 1.5x the estimate at 8
    corrected = choose_micro_batch(8, 4, need, room_bytes=int(22 * GIB), measured=measured)
    assert (corrected.micro_batch, corrected.accumulation) == (16, 2)  # 11.6 x 1.5 = 17.4 fits, 31.8 does not
    assert corrected.reason == (
        "micro-batch 8 x 4 -> 16 x 2: the estimate at 16 is 17.4 GiB of 22.0 GiB free "
        "(the estimate x1.50, from the peak measured at 8)"
    )


def test_a_measured_peak_below_the_estimate_changes_nothing():
    need = linear(2, 0.6)
    low = choose_micro_batch(8, 4, need, room_bytes=int(22 * GIB), measured=(16, 4 * GIB))
    assert low == choose_micro_batch(8, 4, need, room_bytes=int(22 * GIB))


def test_a_micro_batch_that_ran_out_of_memory_before_is_never_chosen_again_nor_any_larger():
    choice = choose_micro_batch(8, 4, linear(2, 0.6), room_bytes=int(138 * GIB), ran_out={32})
    assert (choice.micro_batch, choice.accumulation) == (16, 2)
    assert choice.reason.endswith("; micro-batch 32 ran out of memory before")
    kept = choose_micro_batch(8, 4, linear(2, 0.6), room_bytes=int(138 * GIB), ran_out={16, 32})
    assert (kept.micro_batch, kept.accumulation) == (8, 4)
    assert kept.reason == "kept 8 x 4: micro-batch 16 ran out of memory before, and a larger one needs more"
    # The asked one is kept even when it ran out before: going smaller is the ladder's (or the person's) call.
    again = choose_micro_batch(8, 4, linear(2, 0.6), int(138 * GIB), ran_out={8})
    assert (again.micro_batch, again.accumulation) == (8, 4)
    assert "micro-batch 8 ran out of memory before" in again.reason
