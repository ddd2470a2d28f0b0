"""A JSON-lines dataset whose line is longer than one example may be (MAX_LINE_BYTES) is refused, naming the file,
the line and the bound: at submit for its first line, read a chunk at a time (never the whole line into memory),
and by the worker for every line."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from tests.unit.data_helpers import write_dataset
from worker.data import files
from worker.preflight.data_peek import MAX_LINE_BYTES, long_first_line
from worker.preflight.dataset_info import DataError, resolve_datasets

ENTRY = {"file_name": "d.jsonl"}
ROW = {"instruction": "a", "input": "", "output": "b"}


def one_long_line(path: Path, size: int) -> None:
    """A file of one line of `size` bytes, written sparse: the test holds no such line in memory either."""
    with path.open("wb") as f:
        f.write(b'{"instruction": "')
        f.truncate(size)


def test_a_300_mb_line_is_refused_at_submit_reading_a_bounded_part(tmp_path):
    write_dataset(tmp_path, {"d": ENTRY}, {})
    one_long_line(tmp_path / "d.jsonl", 300 << 20)
    tracemalloc.start()
    with pytest.raises(DataError) as info:
        resolve_datasets(["d"], tmp_path, [str(tmp_path)])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "d.jsonl line 1 is longer than 16 MiB" in str(info.value) and "MAX_LINE_BYTES" in str(info.value)
    assert "dataset 'd'" in str(info.value)
    assert peak < 8 << 20  # a chunk at a time, not the 300 MB


def test_lines_within_the_bound_and_json_arrays_pass(tmp_path):
    write_dataset(tmp_path, {"d": ENTRY}, {"d.jsonl": [{**ROW, "output": "x" * 200_000}, ROW]})
    assert resolve_datasets(["d"], tmp_path, [str(tmp_path)])
    (tmp_path / "a.json").write_text(json.dumps([{**ROW, "output": "x" * 100}] * 2_000))  # one line, an array
    assert long_first_line(tmp_path / "a.json", [str(tmp_path)], limit=1024) is None


def test_the_bound_is_exact(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"x" * 1024 + b"\n{}\n")
    assert long_first_line(path, [str(tmp_path)], limit=1024) is None
    assert "line 1 is longer than" in (long_first_line(path, [str(tmp_path)], limit=1023) or "")
    path.write_bytes(b"x" * 5000)  # no newline at all, ending past the bound
    assert long_first_line(path, [str(tmp_path)], limit=1024) is not None


def test_the_worker_refuses_any_long_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_LINE_BYTES", 1 << 10)
    text = "\n".join([json.dumps(ROW)] * 3 + [json.dumps({**ROW, "output": "x" * 2000})])
    write_dataset(tmp_path, {"d": ENTRY}, {"d.jsonl": text})
    (attr,) = resolve_datasets(["d"], tmp_path, [str(tmp_path)])
    with pytest.raises(DataError, match=r"d.jsonl line 4 is longer than"):
        files.read_rows(attr, [str(tmp_path)])
    assert MAX_LINE_BYTES == 16 << 20  # the documented bound (docs/volume.md)
