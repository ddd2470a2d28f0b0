"""What the worker reports, made safe to store: nothing a record holds can break the database or the API.

Pure: from one record as read from metrics.jsonl to what the store keeps of it.
A worker is a separate program (a custom `FTQ_WORKER_MODULE`, a future version,
a bug): its step counts may not fit a 64-bit column, its floats may be NaN
(which JSON responses cannot carry), its lines may be huge. A record that
cannot be kept as it is, is kept raw with the reason; it never stops the
scheduler or another job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

INT64_MAX = 2**63 - 1
KINDS = ("start", "metric", "eval", "checkpoint", "end")
MAX_RECORD_BYTES = 64 << 10  # a record is a few hundred bytes; anything this large is not a metric
RAW_KEPT_CHARS = 2000
# Numeric fields the store copies onto the attempt: they must be numbers in range.
STEP_FIELDS = ("current_steps", "total_steps", "resumed_from_step")


@dataclass(frozen=True)
class Storable:
    """One record as the store keeps it: its kind, the step it belongs to, and its data."""

    kind: str
    step: int
    data: dict[str, Any]

    @property
    def valid(self) -> bool:
        return self.kind != "invalid"


def invalid(raw: Any, reason: str) -> Storable:
    """A record kept raw with the reason it could not be kept as it is."""
    text = raw if isinstance(raw, str) else json.dumps(raw, default=repr, allow_nan=True)[: RAW_KEPT_CHARS + 1]
    return Storable("invalid", 0, {"kind": "invalid", "raw": text[:RAW_KEPT_CHARS], "reason": reason})


def storable(record: dict[str, Any]) -> Storable:
    """The record with its steps checked and its non-finite numbers replaced by null (their names kept)."""
    if record.get("kind") == "invalid":  # the tailer's own verdict on a line that is not JSON
        return Storable("invalid", 0, {"kind": "invalid", **record})
    kind = record.get("kind", "metric")
    if kind not in KINDS:
        return invalid(record, f"unknown record kind {str(kind)[:40]!r} (known: {', '.join(KINDS)})")
    for name in STEP_FIELDS:
        value = record.get(name)
        if value is not None and as_step(value) is None:
            return invalid(record, f"{name} is {str(value)[:40]!r}, not a whole number from 0 to {INT64_MAX}")
    nonfinite: list[str] = []
    data = _finite(record, "", nonfinite)
    if nonfinite:
        data["nonfinite"] = nonfinite  # NaN loss is news (the run diverged): say so instead of dropping it
    try:
        size = len(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as exc:
        return invalid(record, f"cannot be stored as JSON: {exc}")
    if size > MAX_RECORD_BYTES:
        return invalid(record, f"is {size} bytes; a record may hold at most {MAX_RECORD_BYTES}")
    return Storable(kind, as_step(record.get("current_steps")) or 0, data)


def as_step(value: Any) -> int | None:
    """A step count as an int in 0 .. INT64_MAX, or None (bool, fractions, strings and overflows are not steps)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        return None
    return value


def finite_number(value: Any) -> float | None:
    """A real, finite number as a float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def record_time(record: dict[str, Any]) -> datetime | None:
    """When the worker wrote the record (its `timestamp`), as an aware UTC datetime, or None."""
    stamp = record.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _finite(value: Any, path: str, nonfinite: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        nonfinite.append(path or "value")
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        nonfinite.append(path or "value")  # JSON has no limit, but every reader of ours has one
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v, f"{path}.{k}" if path else str(k), nonfinite) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v, f"{path}[{i}]", nonfinite) for i, v in enumerate(value)]
    return value
