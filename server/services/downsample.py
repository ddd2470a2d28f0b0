"""A job's records thinned to a bound that keeps each curve's shape (GET /jobs/{id}/metrics?points=): pure.

Written here rather than taken from a library: LTTB-style packages need every point in memory at once and
know nothing of record kinds; this reads the records once, in order, holding two records per bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# The kinds that are curves, thinned by the value each is drawn by; every record of another kind is kept.
CURVES = {"metric": "loss", "eval": "eval_loss"}
MIN_POINTS = 8


@dataclass
class _Curve:
    """One kind's pass: `buckets` of its middle records (all but the first and the last), each keeping the
    records of its lowest and highest value (the first record, when none has a number)."""

    count: int
    buckets: int
    seen: int = 0
    bucket: int = -1
    low: tuple[float, int] | None = None
    high: tuple[float, int] | None = None
    plain: int | None = None
    last: tuple[int, float | None] | None = None  # held back: the kind's last record is kept whatever it holds
    kept: list[int] = field(default_factory=list)

    def flush(self) -> None:
        chosen = {pick[1] for pick in (self.low, self.high) if pick is not None}
        if not chosen and self.plain is not None:
            chosen = {self.plain}
        self.kept.extend(sorted(chosen))
        self.low = self.high = None
        self.plain = None

    def add(self, record_id: int, value: float | None) -> None:
        index, self.seen = self.seen, self.seen + 1
        if index == 0:
            self.kept.append(record_id)
            return
        if self.last is not None:
            self._middle(index - 1, *self.last)
        self.last = (record_id, value)

    def _middle(self, index: int, record_id: int, value: float | None) -> None:
        # The middle records are 1 .. count-2; one past the count (written since it was taken) joins the last bucket.
        bucket = min(self.buckets - 1, (index - 1) * self.buckets // max(1, self.count - 2))
        if bucket != self.bucket:
            self.flush()
            self.bucket = bucket
        if self.plain is None:
            self.plain = record_id
        if value is None:
            return
        if self.low is None or value < self.low[0]:
            self.low = (value, record_id)
        if self.high is None or value > self.high[0]:
            self.high = (value, record_id)

    def finish(self) -> list[int]:
        self.flush()
        if self.last is not None:
            self.kept.append(self.last[0])
        return self.kept


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def thin(rows: Iterable[tuple[int, str, object]], counts: Mapping[str, int], points: int) -> list[int]:
    """The ids to keep of `rows` — (id, kind, value) in the order written — given how many records of each kind
    there are: at most `points` of each curve kind (its first and its last, and of each of (points - 2) // 2
    buckets of the rest the records of the lowest and the highest value, or its first when none has a number),
    every record of a curve kind with no more than `points`, and every record of another kind. `rows` come in
    the order of their ids, and so do the ids returned.
    """
    if points < MIN_POINTS:
        raise ValueError(f"points must be at least {MIN_POINTS}, not {points}")
    curves = {
        kind: _Curve(count, (points - 2) // 2) for kind, count in counts.items() if kind in CURVES and count > points
    }
    kept: list[int] = []
    for record_id, kind, value in rows:
        curve = curves.get(kind)
        if curve is None:
            kept.append(record_id)
        else:
            curve.add(record_id, _number(value))
    for curve in curves.values():
        kept.extend(curve.finish())
    return sorted(kept)
