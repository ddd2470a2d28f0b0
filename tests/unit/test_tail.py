import json

from scheduler.local.tail import last_lines, read_new_records


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
