"""Reading what a worker writes: its metrics.jsonl from a stored byte offset, and the last lines of its log.

Only whole lines count: a line the worker is still writing waits for the next
read. The offset is stored with the records it covered, so a daemon that
restarts carries on where it stopped and no record is stored twice.

A read is bounded (CHUNK_BYTES of the file, CHUNK_RECORDS records) so that one
worker's backlog of millions of records costs each pass of the loop a bounded
time and memory: it says whether whole lines are left (`more`), and the caller
reads again, as many times as it takes. A line longer than a record may be
(scheduler.policy.records.MAX_RECORD_BYTES) is never held whole: it is skipped
to its newline in blocks and kept as `kind: invalid` with its offset and size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from scheduler.policy.records import MAX_RECORD_BYTES, RAW_KEPT_CHARS
from worker.spec.layout import older_log

CHUNK_BYTES = 1 << 20  # of the file read in one pass, at most (a record is a few hundred bytes)
CHUNK_RECORDS = 2_000  # records parsed in one pass, at most: one transaction of the loop stores them (~0.1-0.25 s)
SCAN_BLOCK = 1 << 20  # how much of an over-long line is held at a time while it is skipped
END_LOOKBACK_BYTES = 4 << 20  # how far before an offset an end record is looked for (the worker writes it last)


@dataclass(frozen=True)
class Read:
    """One bounded read: the records, the offset just past the last whole line read, and whether lines are left."""

    records: list[dict[str, Any]]
    offset: int
    more: bool  # whole lines (or an over-long line now ended) are left past `offset`: read again at once


def read_records(
    path: Path,
    offset: int,
    max_bytes: int = CHUNK_BYTES,
    max_records: int = CHUNK_RECORDS,
    max_line: int = MAX_RECORD_BYTES,
) -> Read:
    """The records appended since `offset`, at most `max_bytes` of them and `max_records` in number."""
    if max_bytes <= max_line:
        raise ValueError(f"max_bytes ({max_bytes}) must exceed max_line ({max_line}), or a read could make no progress")
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read(max_bytes)
            records, used, capped = _lines(chunk, offset, max_records, max_line)
            if capped:
                return Read(records, offset + used, True)
            if len(chunk) - used <= max_line:  # a line cut by the chunk's end, or one still being written
                return Read(records, offset + used, len(chunk) == max_bytes)
            # A line longer than any record that does not end in this chunk: find its end without holding it.
            start = offset + used
            newline = _next_newline(f, offset + len(chunk))
    except FileNotFoundError:
        return Read([], offset, False)
    if newline is None:  # still being written: it is read again (in blocks) until its newline comes
        return Read(records, start, False)
    records.append(_too_long(chunk[used : used + RAW_KEPT_CHARS], start, newline - start, max_line))
    return Read(records, newline + 1, True)


def _lines(chunk: bytes, base: int, max_records: int, max_line: int) -> tuple[list[dict[str, Any]], int, bool]:
    """The chunk's whole lines as records: (records, bytes used, whether `max_records` stopped it early)."""
    records: list[dict[str, Any]] = []
    pos = 0
    while True:
        newline = chunk.find(b"\n", pos)
        if newline < 0:
            return records, pos, False
        if len(records) >= max_records:
            return records, pos, True
        line = chunk[pos:newline]
        if len(line) > max_line:
            records.append(_too_long(line[:RAW_KEPT_CHARS], base + pos, len(line), max_line))
        elif line.strip():
            records.append(_parse(line, base + pos))
        pos = newline + 1


def _parse(line: bytes, at: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _invalid(line, f"not valid JSON: {exc}", at, len(line))
    except RecursionError:
        return _invalid(line, "nested too deeply to be read", at, len(line))
    if not isinstance(record, dict):
        return _invalid(line, "a JSON value that is not an object", at, len(line))
    return record


def _next_newline(f: IO[bytes], position: int) -> int | None:
    """The file offset of the first newline at or after `position`, read SCAN_BLOCK at a time; None: none yet."""
    f.seek(position)
    while block := f.read(SCAN_BLOCK):
        found = block.find(b"\n")
        if found >= 0:
            return position + found
        position += len(block)
    return None


def _too_long(head: bytes, at: int, size: int, max_line: int) -> dict[str, Any]:
    reason = f"a line of {size} bytes, longer than a record may be ({max_line} bytes): skipped, its start kept"
    return _invalid(head, reason, at, size)


def last_end(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last `end` record among `records`: how the run ended, by its own account."""
    return next((r for r in reversed(records) if r.get("kind") == "end"), None)


def last_end_before(path: Path, offset: int, lookback: int = END_LOOKBACK_BYTES) -> dict[str, Any] | None:
    """The last `end` record among the whole lines in the `lookback` bytes before `offset`.

    For a worker that ended while no daemon watched, whose end a previous daemon may have stored: the worker
    writes its end last, so it lies just before the offset; only lines that mention "end" are parsed.
    """
    start = max(0, offset - lookback)
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(offset - start)
    except FileNotFoundError:
        return None
    data = data[: data.rfind(b"\n") + 1]  # whole lines only (an offset asked is a line's start)
    if start > 0:  # the first line may be cut: it may start before the window
        data = data[data.find(b"\n") + 1 :]
    for line in reversed(data.splitlines()):
        if b'"end"' in line and len(line) <= MAX_RECORD_BYTES:
            record = _parse(line, 0)
            if record.get("kind") == "end":
                return record
    return None


def _invalid(line: bytes, reason: str, at: int, size: int) -> dict[str, Any]:
    """A line kept raw with the reason it is not a record: what the worker wrote is never dropped unsaid."""
    raw = line[:RAW_KEPT_CHARS].decode("utf-8", "replace")
    return {"kind": "invalid", "raw": raw, "reason": reason, "offset": at, "size": size}


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
