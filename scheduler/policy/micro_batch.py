"""The micro-batch an attempt runs: the largest its GPUs hold, with the same samples per optimizer step.

Pure: from what the spec asks (micro-batch x gradient accumulation), the estimate at
a candidate micro-batch and the room the attempt's GPUs offer, to the micro-batch and
accumulation to run and a sentence saying why. The candidates are the divisors of
micro-batch x accumulation that are at least the micro-batch asked, so the samples
per rank per step stay exactly what was asked (the world size does not change, so
neither does the effective batch), and the asked micro-batch is never lowered: going
smaller is the OOM ladder's job (scheduler.policy.retry). An earlier attempt of the job that
measured its peak corrects the estimate upward, where the estimate counted less than
this job needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

from worker.spec.units import gib_text


@dataclass(frozen=True)
class MicroBatchChoice:
    micro_batch: int
    accumulation: int
    reason: str


def divisors(n: int) -> list[int]:
    """Every positive divisor of n, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def candidates(asked_micro: int, asked_accumulation: int) -> list[int]:
    """Micro-batches that keep micro-batch x accumulation as asked and are not below the asked one, ascending."""
    return [d for d in divisors(asked_micro * asked_accumulation) if d >= asked_micro]


def correction(need_for: Callable[[int], int], measured: tuple[int, int] | None) -> float:
    """How much the estimate under-counted for this job: measured peak / estimate at that micro-batch, at least 1.

    Never below 1: a peak under the estimate may be an attempt that stopped before its
    largest batch, and the estimate is what the placement already trusted.
    """
    if measured is None:
        return 1.0
    micro, peak = measured
    estimated = need_for(micro)
    return max(1.0, peak / estimated) if estimated > 0 else 1.0


def choose_micro_batch(
    asked_micro: int,
    asked_accumulation: int,
    need_for: Callable[[int], int],
    room_bytes: int,
    measured: tuple[int, int] | None = None,
    ran_out: Collection[int] = (),
) -> MicroBatchChoice:
    """The largest candidate micro-batch whose (corrected) per-GPU estimate fits in `room_bytes`, else the asked one.

    `need_for(d)`: the per-GPU estimate in bytes at micro-batch d. `measured`: (micro-batch,
    peak bytes) of an earlier attempt of this job that trained. `ran_out`: micro-batches that
    ran out of memory before at this cutoff_len and checkpointing; none at or above the
    smallest of them is chosen, as a larger one needs more (the asked one is kept all the same).
    """
    total = asked_micro * asked_accumulation
    factor = correction(need_for, measured)
    note = f" (the estimate x{factor:.2f}, from the peak measured at {measured[0]})" if measured and factor > 1 else ""
    asked = f"{asked_micro} x {asked_accumulation}"
    ceiling = min(ran_out, default=None)
    above = candidates(asked_micro, asked_accumulation)[1:]
    larger = [d for d in above if ceiling is None or d < ceiling]
    if ceiling is not None and len(larger) < len(above):
        note += f"; micro-batch {ceiling} ran out of memory before"
    for d in reversed(larger):
        need = math.ceil(need_for(d) * factor)
        if need <= room_bytes:
            reason = f"micro-batch {asked} -> {d} x {total // d}: the estimate at {d} is {gib_text(need)} of "
            return MicroBatchChoice(d, total // d, reason + f"{gib_text(room_bytes)} free{note}")
    if larger:
        need = math.ceil(need_for(larger[0]) * factor)
        why = f"{larger[0]} would need {gib_text(need)} of {gib_text(room_bytes)} free{note}"
    elif above:
        why = f"micro-batch {ceiling} ran out of memory before, and a larger one needs more"
    else:
        why = f"no larger micro-batch keeps {total} samples per step"
    return MicroBatchChoice(asked_micro, asked_accumulation, f"kept {asked}: {why}")
