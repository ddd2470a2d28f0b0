"""The metrics file itself, without torch: appending records, and their time formats.

Split from worker.outputs.sink so that the multi-GPU launcher can write the run's `end`
record without importing torch and transformers (seconds of start-up it does not
need: the ranks it starts import them).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def utc_timestamp() -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-11-23T11:02:03.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hms(seconds: float) -> str:
    """H:MM:SS, like LLaMA-Factory's elapsed/remaining times (hours are not wrapped into days)."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def hms_seconds(text: object) -> float | None:
    """hms()'s inverse: "H:MM:SS" (hours unbounded) in seconds; None for anything else."""
    if not isinstance(text, str):
        return None
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    hours, minutes, secs = (int(p) for p in parts)
    return float(hours * 3600 + minutes * 60 + secs)


class MetricsSink:
    """Appends records and flushes each line, so a reader never sees half a run's progress late."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")  # open for the whole run: one line per record

    def write(self, kind: str, /, **fields: Any) -> dict[str, Any]:
        """Write one record; fields that are None are left out."""
        record = make_record(kind, fields)
        self.write_record(record)
        return record

    def write_record(self, record: dict[str, Any]) -> None:
        """Write a record as it is (for the rare field that is meaningful as null)."""
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class NullSink(MetricsSink):
    """What ranks other than 0 write to: nothing. Only rank 0 speaks for a multi-GPU run."""

    def __init__(self) -> None:
        self.path = None  # type: ignore[assignment]

    def write_record(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def append_record(path: str | Path, kind: str, /, **fields: Any) -> dict[str, Any]:
    """Append one record to a metrics file that another process may have left mid-line.

    A writer killed in the middle of a line leaves it without its newline; the
    record then starts a line of its own, so that it is never glued to the
    fragment (readers skip a line that is not JSON).
    """
    path = Path(path)
    record = make_record(kind, fields)
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if _ends_mid_line(path) else "") + json.dumps(record, ensure_ascii=False) + "\n")
    return record


def make_record(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """kind, timestamp, then the fields that have a value (None is left out, never written as null)."""
    record = {"kind": kind, "timestamp": utc_timestamp()}
    record.update((key, value) for key, value in fields.items() if value is not None)
    return record


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return False
        f.seek(size - 1)
        return f.read(1) != b"\n"
