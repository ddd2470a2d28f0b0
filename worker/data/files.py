"""The rows of a dataset's files: json, jsonl, csv, parquet, arrow, each read through the confined open.

The parsers are the ones `datasets` itself uses for these types (pandas'
read_csv, pyarrow's parquet and Arrow IPC readers; JSON as an array or one object
a line), but fed from the descriptor worker.preflight.confine opened and checked (a regular
file inside the input dirs, its real path read back from the descriptor), never
from a name opened again later: `datasets.load_dataset` would open the path
itself, after our check, and copy every file into its cache outside the daemon's
dirs. Parquet and arrow files are memory-mapped from that descriptor. JSON is
parsed here so that an error names the file and the line.

Rows come back as plain dicts, a JSON null or an empty cell as None, which is
what worker.data.convert reads; `limit` (max_samples) stops reading once that many
rows are in, as LLaMA-Factory keeps the first max_samples rows of each dataset.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from worker.preflight.confine import BadFile, Roots, open_fd, read_text, show
from worker.preflight.data_peek import MAX_LINE_BYTES, long_line_message
from worker.preflight.dataset_info import DataError, DatasetAttr


def read_rows(attr: DatasetAttr, roots: Roots = None, limit: int | None = None) -> list[Any]:
    """The dataset's rows, file after file (a directory's in name order), at most `limit` of them."""
    rows: list[Any] = []
    for path in attr.files:
        wanted = None if limit is None else limit - len(rows)
        if wanted == 0:
            break
        try:
            rows += _read_file(attr.name, path, attr.file_type, roots, wanted)
        except BadFile as exc:  # checked again here: the file may have changed since it was listed
            raise DataError(f"dataset {attr.name!r}: {exc}") from None
    return rows


def _read_file(name: str, path: Path, file_type: str, roots: Roots, limit: int | None) -> list[Any]:
    if file_type == "json":
        return _json_rows(name, path, roots, limit)
    if file_type == "csv":
        return _csv_rows(name, path, roots, limit)
    return _arrow_rows(name, path, file_type, roots, limit)


def _json_rows(name: str, path: Path, roots: Roots, limit: int | None) -> list[Any]:
    text = read_text(path, roots)
    # Like the `datasets` json loader: a JSON array, or one object per line.
    if text.lstrip().startswith("["):
        try:
            return list(json.loads(text))[:limit]
        except json.JSONDecodeError as exc:
            raise _bad_json(name, path, exc.lineno, exc) from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(rows) == limit:
            break
        if len(line) > MAX_LINE_BYTES:  # characters, at most as many as its bytes: no example is this long
            raise DataError(f"dataset {name!r}: {long_line_message(path, lineno, MAX_LINE_BYTES)}")
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise _bad_json(name, path, lineno, exc) from None
    return rows


def _bad_json(name: str, path: Path, lineno: int, exc: json.JSONDecodeError) -> DataError:
    return DataError(f"dataset {name!r}: {show(path)} line {lineno} column {exc.colno}: invalid JSON ({exc.msg})")


def _csv_rows(name: str, path: Path, roots: Roots, limit: int | None) -> list[Any]:
    fd = open_fd(path, roots)
    with os.fdopen(fd, "rb") as f:
        try:
            frame = pd.read_csv(f, nrows=limit)  # `datasets`' csv defaults are pandas' own
        except UnicodeDecodeError as exc:
            raise DataError(
                f"dataset {name!r}: {show(path)} is not UTF-8 text (byte {exc.start} of a chunk holds "
                f"{exc.object[exc.start : exc.start + 4]!r}); save it as UTF-8"
            ) from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            raise DataError(f"dataset {name!r}: {show(path)} is not readable CSV ({_first_line(exc)})") from None
    # Through Arrow, as `datasets` does: an empty cell (NaN) becomes None rather than a float.
    return pa.Table.from_pandas(frame, preserve_index=False).to_pylist()


def _arrow_rows(name: str, path: Path, file_type: str, roots: Roots, limit: int | None) -> list[Any]:
    fd = open_fd(path, roots)
    try:
        if os.fstat(fd).st_size == 0:
            raise DataError(f"dataset {name!r}: {show(path)} is an empty file (0 bytes), not {file_type} data")
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # the checked descriptor's file, mapped
    finally:
        os.close(fd)
    source = pa.BufferReader(pa.py_buffer(mapped))
    try:
        if file_type == "parquet":
            table = _parquet(source, limit)
        else:
            table = _ipc(source, limit)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"dataset {name!r}: {show(path)} is not a readable {file_type} file ({exc})") from None
    return table.to_pylist()


def _parquet(source: pa.BufferReader, limit: int | None) -> pa.Table:
    if limit is None:
        return pq.read_table(source)
    batches = pq.ParquetFile(source).iter_batches(batch_size=limit)
    first = next(batches, None)
    return pa.Table.from_batches([first]) if first is not None else pa.table({})


def _ipc(source: pa.BufferReader, limit: int | None) -> pa.Table:
    """An Arrow IPC stream (what `datasets` writes), else an Arrow IPC file, as `datasets`' arrow loader tries."""
    try:
        reader: Any = pa.ipc.open_stream(source)
        batches = iter(reader)
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    kept, count = [], 0
    for batch in batches:
        if limit is not None and count >= limit:
            break
        kept.append(batch)
        count += batch.num_rows
    table = pa.Table.from_batches(kept, schema=reader.schema)
    return table if limit is None else table.slice(0, limit)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
