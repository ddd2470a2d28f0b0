import json
import os
from pathlib import Path
from typing import Any

from scheduler.local.node_supervisor import NodeSupervisor
from scheduler.local.tail import Read, last_end_before, last_lines, read_records


def read_new_records(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """One bounded read's records and the offset it reached."""
    read = read_records(path, offset)
    return read.records, read.offset


def test_only_whole_lines_are_read_and_the_offset_resumes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "start"}) + "\n" + '{"kind": "metric", "lo')
    records, offset = read_new_records(path, 0)
    assert records == [{"kind": "start"}]
    again, same = read_new_records(path, offset)
    assert again == [] and same == offset
    with path.open("a") as f:
        f.write('ss": 1.5}\n')
    records, offset2 = read_new_records(path, offset)
    assert records == [{"kind": "metric", "loss": 1.5}] and offset2 == path.stat().st_size


def test_a_missing_file_reads_as_nothing_yet(tmp_path):
    assert read_new_records(tmp_path / "nope.jsonl", 0) == ([], 0)


def test_a_garbled_line_is_kept_visible_not_fatal(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("not json\n")
    records, _ = read_new_records(path, 0)
    assert records[0]["kind"] == "invalid" and records[0]["raw"] == "not json"


def test_last_lines(tmp_path):
    path = tmp_path / "worker.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert last_lines(path, 2) == "line 98\nline 99"
    assert last_lines(tmp_path / "none.log", 5) == ""


def write_records(path, count, start=0, pad=0):
    with path.open("a") as f:
        for step in range(start + 1, start + count + 1):
            note = {"note": "n" * pad} if pad else {}
            f.write(json.dumps({"kind": "metric", "current_steps": step, "loss": 1.0 / step, **note}) + "\n")


def read_all(path, offset=0, **bounds):
    """Every read from `offset` until none is left: the records, the offsets each read reached, its `more`s."""
    records, reached, mores = [], [], []
    while True:
        read = read_records(path, offset, **bounds)
        records += read.records
        reached.append(read.offset)
        mores.append(read.more)
        offset = read.offset
        if not read.more:
            return records, reached, mores


def test_a_backlog_is_read_in_bounded_parts_each_record_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, 1000)
    records, reached, mores = read_all(path, max_bytes=4096, max_records=64, max_line=1000)
    assert [r["current_steps"] for r in records] == list(range(1, 1001))
    assert reached == sorted(reached) and reached[-1] == path.stat().st_size
    assert all(mores[:-1]) and not mores[-1] and len(mores) >= 1000 // 64
    assert len(read_records(path, 0, max_bytes=1 << 20, max_records=100).records) == 100  # the record bound


def test_a_line_cut_by_the_bound_is_read_whole_next_time(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, 10)
    size = path.stat().st_size
    first = read_records(path, 0, max_bytes=size - 5, max_line=100)  # the last line does not fit
    assert len(first.records) == 9 and first.more
    second = read_records(path, first.offset, max_bytes=size - 5, max_line=100)
    assert [r["current_steps"] for r in second.records] == [10] and second.offset == size and not second.more


def test_a_line_longer_than_a_record_is_skipped_to_its_newline_and_kept_as_invalid(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, 3)
    at = path.stat().st_size
    with path.open("a") as f:
        f.write('{"kind": "metric", "blob": "' + "x" * 5000 + '"}\n')  # longer than a record, shorter than a read
        f.write('{"kind": "metric", "blob": "' + "y" * 50_000 + '"}\n')  # longer than a read too
    write_records(path, 3, start=3)
    records, _, _ = read_all(path, max_bytes=4096, max_records=1000, max_line=1000)
    kinds = [r["kind"] for r in records]
    assert kinds == ["metric"] * 3 + ["invalid"] * 2 + ["metric"] * 3
    short, long = records[3], records[4]
    assert (short["offset"], short["size"]) == (at, 5030) and (long["offset"], long["size"]) == (at + 5031, 50_030)
    assert long["raw"].startswith('{"kind": "metric", "blob": "yyy') and len(long["raw"]) == 2000
    assert "50030 bytes" in long["reason"]
    assert [r["current_steps"] for r in records if r["kind"] == "metric"] == [1, 2, 3, 4, 5, 6]


def test_a_5_mib_line_no_longer_stops_the_stream(tmp_path):
    """The fault of issue 20: a line over one read returned nothing and kept its offset, for good."""
    path = tmp_path / "metrics.jsonl"
    with path.open("w") as f:
        f.write('{"kind": "start"}\n' + '{"kind": "metric", "blob": "' + "z" * (5 << 20) + '"}\n{"kind": "end"}\n')
    records, offset = [], 0
    for _ in range(10):
        more, offset = read_new_records(path, offset)
        records += more
    assert [r["kind"] for r in records] == ["start", "invalid", "end"] and offset == path.stat().st_size
    assert records[1]["offset"] == 18 and records[1]["size"] == (5 << 20) + 30


def test_a_long_line_still_being_written_waits_at_its_start(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, 2)
    at = path.stat().st_size
    with path.open("a") as f:
        f.write("w" * 10_000)
    read = read_records(path, 0, max_bytes=4096, max_line=1000)
    assert len(read.records) == 2 and read.offset == at and not read.more
    assert read_records(path, at, max_bytes=4096, max_line=1000) == Read([], at, False)
    with path.open("a") as f:
        f.write("\n")
    read = read_records(path, at, max_bytes=4096, max_line=1000)
    assert read.records[0]["kind"] == "invalid" and read.records[0]["size"] == 10_000 and read.more


def test_the_end_record_is_found_just_before_an_offset(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, 100)
    with path.open("a") as f:
        f.write(json.dumps({"kind": "end", "status": "succeeded"}) + "\n")
    size = path.stat().st_size
    assert last_end_before(path, size) == {"kind": "end", "status": "succeeded"}
    assert last_end_before(path, size - 1) is None  # a line cut by the offset is not read
    assert last_end_before(path, size, lookback=10) is None  # beyond the lookback
    assert last_end_before(tmp_path / "none.jsonl", 100) is None


def test_an_ended_worker_is_reported_ended_only_once_its_file_is_read_to_its_end(tmp_path):
    """The fault of issue 20: an ended worker's backlog past one read lost its last records and its end."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "start"}\n')
    write_records(path, 40_000, pad=100)  # 6.2 MiB: more than one read, then (4 MiB) or now
    with path.open("a") as f:
        f.write('{"kind": "end", "status": "succeeded"}\n')
    node = NodeSupervisor()
    assert not node.adopt_worker(7, str(tmp_path), os.getpid(), None)  # its process has ended (adopted: no exit code)
    offset, records, answers = 0, [], []
    while not answers or not answers[-1].ended:
        answers.append(node.progress({7: offset})[7])
        records += answers[-1].records
        offset = answers[-1].offset
        assert len(answers) < 1000
    assert len(answers) > 2 and all(a.more for a in answers[:-1]) and not answers[-1].more
    assert [r.get("current_steps") for r in records] == [None, *range(1, 40_001), None]
    assert records[0]["kind"] == "start" and records[-1]["kind"] == "end"
    assert answers[-1].end == {"kind": "end", "status": "succeeded"} and offset == path.stat().st_size
    # Asked again from its end (an earlier daemon stored it all): its end is found just before the offset.
    again = node.progress({7: offset})[7]
    assert again.ended and again.records == [] and again.end == {"kind": "end", "status": "succeeded"}
