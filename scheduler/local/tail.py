"""Reading what a worker writes: its metrics.jsonl from a stored byte offset, and the last lines of its log.

Only whole lines count: a line the worker is still writing waits for the next
read. The offset is stored with the records it covered, so a daemon that
restarts carries on where it stopped and no record is stored twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.spec.layout import older_log


def read_new_records(path: Path, offset: int, max_bytes: int = 4 << 20) -> tuple[list[dict[str, Any]], int]:
    """Records appended since `offset`, and the offset just past the last whole line read."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    records: list[dict[str, Any]] = []
    for line in chunk[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            record = _invalid(line, f"not valid JSON: {exc}")
        except RecursionError:
            record = _invalid(line, "nested too deeply to be read")
        if not isinstance(record, dict):
            record = _invalid(line, "a JSON value that is not an object")
        records.append(record)
    return records, offset + end + 1


def last_end(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last `end` record among `records`: how the run ended, by its own account."""
    return next((r for r in reversed(records) if r.get("kind") == "end"), None)


def _invalid(line: bytes, reason: str) -> dict[str, Any]:
    """A line kept raw with the reason it is not a record: what the worker wrote is never dropped unsaid."""
    return {"kind": "invalid", "raw": line.decode("utf-8", "replace")[:2000], "reason": reason}


def last_lines(path: Path, count: int, max_bytes: int = 256 << 10) -> str:
    """The log's last `count` lines (reading at most `max_bytes` from its end).

    A capped log (worker.outputs.log_cap) rotates: when the newer part holds fewer than `count` whole lines,
    the rest come from the end of the older part (path.1), the two read as one file.
    """
    data = _tail_bytes(path, max_bytes)
    if data.count(b"\n") <= count and len(data) < max_bytes:  # its first line may be one rotation cut in two
        data = _tail_bytes(path.with_name(older_log(path.name)), max_bytes - len(data)) + data
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-count:]) if count > 0 else ""


def _tail_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's last `max_bytes` bytes (all of it when smaller; none when it is missing)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - max_bytes))
            return f.read(max_bytes)
    except FileNotFoundError:
        return b""
