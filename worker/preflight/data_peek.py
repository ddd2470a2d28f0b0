"""The first rows (or the columns) of a dataset file, read cheaply, so that submit can refuse what cannot train.

At most PEEK_BYTES from the start of a json / jsonl / csv file (at most PEEK_ROWS
rows of it), the schema of a parquet file (its footer) or of an arrow file (its
first message), every one opened through worker.preflight.confine. A peek never decides
that a file is bad JSON or not UTF-8: undecodable bytes are replaced and rows
that do not parse are passed over, because the worker, which reads the whole
file, says which line is wrong. It only tells which columns the file has.

Pure (os, json, csv; pyarrow imported only to read a parquet or arrow schema): the server peeks at submit.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

from worker.preflight.confine import BadFile, Roots, open_fd, read_range, show

PEEK_BYTES = 64 << 10
PEEK_ROWS = 5
# The longest line of a JSON-lines dataset: one example. A 128k-token context is well under 1 MiB of text, so a
# longer line is no example ftq can train on (a file that is not JSON lines at all, or a runaway write); the
# worker would read it whole and parse it before telling. Submit looks for the end of the first line when the peek
# saw none (reading at most this much, a chunk at a time); the worker checks every line (worker.data.files).
MAX_LINE_BYTES = 16 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Peek:
    """What the start of a file shows: its columns (None: no whole row within PEEK_BYTES) and its first rows."""

    columns: list[str] | None
    rows: list[dict[str, Any]] = field(default_factory=list)  # json / jsonl only; tabular files give columns


class CannotPeek(Exception):
    """The file cannot be read as its type at all (not parquet, not arrow); the message says so."""


def peek(path: str | os.PathLike[str], file_type: str, roots: Roots) -> Peek:
    """The columns of a dataset file of `file_type` (json, csv, parquet, arrow); BadFile or CannotPeek."""
    if file_type in ("parquet", "arrow"):
        return Peek(_schema_names(path, file_type, roots))
    data = read_range(path, roots, 0, PEEK_BYTES)
    whole = len(data) < PEEK_BYTES  # the file ended within the peek
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=whole)
    if file_type == "csv":
        return Peek(_csv_header(text))
    rows = _json_rows(text, whole)
    if not rows:
        return Peek(None)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return Peek(columns, rows)


def long_first_line(path: str | os.PathLike[str], roots: Roots, limit: int | None = None) -> str | None:
    """Why a JSON-lines file's first line is too long (naming the file, the line and the bound), or None; read a
    chunk at a time up to the bound, never whole. A JSON array (first byte `[`) is not read by lines: None."""
    limit = MAX_LINE_BYTES if limit is None else limit
    fd = open_fd(path, roots)
    try:
        offset = 0
        while offset <= limit:
            chunk = os.pread(fd, _CHUNK, offset)
            if not chunk:
                return None  # the file ends within the bound
            if offset == 0 and chunk.lstrip().startswith(b"["):
                return None
            end = chunk.find(b"\n")
            if end >= 0:
                return None if offset + end <= limit else long_line_message(path, 1, limit)
            offset += len(chunk)
    except OSError as exc:
        raise CannotPeek(f"{show(path)} cannot be read ({exc})") from None
    finally:
        os.close(fd)
    return long_line_message(path, 1, limit)


def long_line_message(path: str | os.PathLike[str], lineno: int, limit: int = MAX_LINE_BYTES) -> str:
    bound = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
    return (
        f"{show(path)} line {lineno} is longer than {bound}, the most one example may take (MAX_LINE_BYTES); "
        "write one JSON object a line, each an example"
    )


def _json_rows(text: str, whole: bool) -> list[dict[str, Any]]:
    """Up to PEEK_ROWS objects: the elements of a JSON array, or one object a line (as the worker reads them)."""
    stripped = text.lstrip()
    rows: list[Any] = []
    if stripped.startswith("["):
        decoder, pos = json.JSONDecoder(), 1
        while len(rows) < PEEK_ROWS:
            while pos < len(stripped) and stripped[pos] in " \t\r\n,":
                pos += 1
            try:
                value, pos = decoder.raw_decode(stripped, pos)
            except json.JSONDecodeError:
                break  # cut off by the peek, or bad: either way the worker's full read decides
            rows.append(value)
    else:
        lines = text.splitlines()
        if not whole and lines:
            lines = lines[:-1]  # the last line may be cut off by the peek
        for line in lines:
            if len(rows) == PEEK_ROWS:
                break
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return [row for row in rows if isinstance(row, dict)]


def _csv_header(text: str) -> list[str] | None:
    """The first record of the file: the header pandas (and so `datasets`) infers the columns from."""
    try:
        header = next(csv.reader(io.StringIO(text)), None)
    except csv.Error:
        return None
    return [name.strip() for name in header] if header else None


def _schema_names(path: str | os.PathLike[str], file_type: str, roots: Roots) -> list[str]:
    import pyarrow as pa  # the server imports this module; pyarrow only when a parquet or arrow file is named
    import pyarrow.parquet as pq

    fd = open_fd(path, roots)
    with os.fdopen(fd, "rb") as f:  # the checked descriptor itself: nothing opens the name again
        try:
            if file_type == "parquet":
                return list(pq.read_schema(f).names)
            try:
                return list(pa.ipc.open_stream(f).schema.names)  # what `datasets` writes (save_to_disk)
            except pa.ArrowInvalid:
                f.seek(0)
                return list(pa.ipc.open_file(f).schema.names)
        except (pa.ArrowException, OSError) as exc:
            raise CannotPeek(f"{show(path)} is not a readable {file_type} file ({exc})") from None


__all__ = [
    "MAX_LINE_BYTES",
    "PEEK_BYTES",
    "PEEK_ROWS",
    "BadFile",
    "CannotPeek",
    "Peek",
    "long_first_line",
    "long_line_message",
    "peek",
]
