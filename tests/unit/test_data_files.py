"""worker.data.files: json, jsonl, csv, parquet and arrow files (and directories of them), read through confine."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from datasets import Dataset

from tests.unit.data_helpers import write_dataset
from worker.data.pipeline import DataError, load_conversations

ALPACA_ROWS = [
    {"instruction": "Summarise", "input": "the order shipped", "output": "Shipped."},
    {"instruction": "Say hi", "input": "", "output": "Hi!"},  # an empty cell: None in csv, "" in json
    {"instruction": "Count", "input": "1 2 3", "output": "Three."},
]
EXPECTED = [
    [{"role": "user", "content": "Summarise\nthe order shipped"}, {"role": "assistant", "content": "Shipped."}],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
    [{"role": "user", "content": "Count\n1 2 3"}, {"role": "assistant", "content": "Three."}],
]


def write_as(path: Path, rows: list[dict], kind: str) -> None:
    """A file of `kind` written by `datasets` itself (arrow: an IPC stream as save_to_disk writes, or an IPC file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.from_list(rows)
    if kind == "json":
        path.write_text(json.dumps(rows, indent=2))  # a JSON array, pretty-printed
    elif kind == "jsonl":
        dataset.to_json(str(path))
    elif kind == "csv":
        dataset.to_csv(str(path), index=False)
    elif kind == "parquet":
        dataset.to_parquet(str(path))
    else:
        table = dataset.data.table
        opener = pa.ipc.new_stream if kind == "arrow" else pa.ipc.new_file
        with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=2)  # more than one record batch


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "parquet", "arrow", "arrow-file"])
def test_every_file_type_gives_the_same_conversations(tmp_path: Path, kind: str) -> None:
    suffix = "arrow" if kind.startswith("arrow") else kind
    write_as(tmp_path / f"faq.{suffix}", ALPACA_ROWS, kind)
    write_dataset(tmp_path, {"faq": {"file_name": f"faq.{suffix}"}}, {})

    conversations = load_conversations(["faq"], tmp_path, None, [str(tmp_path)])

    assert [c.messages for c in conversations] == EXPECTED
    assert load_conversations(["faq"], tmp_path, max_samples=2)[-1].messages == EXPECTED[1]


def test_sharegpt_turns_from_parquet(tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "system": "S"}]
    write_as(tmp_path / "sg.parquet", rows, "parquet")
    columns = {"messages": "conversations", "system": "system"}
    entry = {"file_name": "sg.parquet", "formatting": "sharegpt", "columns": columns}
    write_dataset(tmp_path, {"sg": entry}, {})

    (conv,) = load_conversations(["sg"], tmp_path, None)

    assert conv.system == "S"
    assert conv.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_a_directory_is_read_file_after_file_in_name_order_and_max_samples_stops_reading(tmp_path: Path) -> None:
    write_as(tmp_path / "shards/b.parquet", ALPACA_ROWS[2:], "parquet")
    write_as(tmp_path / "shards/a.parquet", ALPACA_ROWS[:2], "parquet")
    (tmp_path / "shards/nested").mkdir()  # passed over, as LLaMA-Factory lists only files
    write_dataset(tmp_path, {"faq": {"file_name": "shards"}}, {})

    assert [c.messages for c in load_conversations(["faq"], tmp_path, None)] == EXPECTED

    (tmp_path / "shards/c.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"'faq': .*shards/c\.parquet is not a readable parquet file"):
        load_conversations(["faq"], tmp_path, None)
    # The first two rows are in the first file: the broken third file is never opened.
    assert len(load_conversations(["faq"], tmp_path, max_samples=2)) == 2


def test_a_file_of_a_directory_that_links_out_of_the_input_dirs_is_refused(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    write_as(tmp_path / "secret.parquet", ALPACA_ROWS, "parquet")
    write_as(inputs / "shards/a.parquet", ALPACA_ROWS, "parquet")
    (inputs / "shards/b.parquet").symlink_to(tmp_path / "secret.parquet")
    write_dataset(inputs, {"faq": {"file_name": "shards"}}, {})
    with pytest.raises(DataError, match=r"'faq': .*shards/b\.parquet leads outside the directories"):
        load_conversations(["faq"], inputs, None, [str(inputs)])


def test_a_csv_that_does_not_parse_names_the_file_and_the_line(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"t": {"file_name": "t.csv"}}, {"t.csv": "instruction,output\na,b\nc,d,e,f\n"})
    with pytest.raises(DataError, match=r"'t': .*t\.csv is not readable CSV \(.*line 3"):
        load_conversations(["t"], tmp_path, None)


def test_a_csv_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"t": {"file_name": "t.csv"}}, {})
    (tmp_path / "t.csv").write_bytes(b"instruction,output\ncaf\xe9,b\n")
    with pytest.raises(DataError, match=r"'t': .*t\.csv is not UTF-8 text"):
        load_conversations(["t"], tmp_path, None)


def test_an_empty_arrow_file_is_named(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"t": {"file_name": "t.arrow"}}, {"t.arrow": ""})
    with pytest.raises(DataError, match=r"'t': .*t\.arrow is an empty file \(0 bytes\)"):
        load_conversations(["t"], tmp_path, None)
