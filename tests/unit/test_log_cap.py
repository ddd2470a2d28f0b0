"""worker.outputs.log_cap's rotation, and the log's tail read across its two parts (scheduler.local.tail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scheduler.local.tail import last_lines
from tests.helpers import REPO
from worker.outputs.log_cap import CappedLog, log_max_bytes
from worker.spec.layout import DEFAULT_LOG_MAX_BYTES, LOG_MAX_BYTES_ENV


def _numbered(first: int, count: int) -> bytes:
    return b"".join(b"%06d\n" % n for n in range(first, first + count))


def test_the_two_parts_stay_within_the_cap_and_keep_the_newest_whole_lines(tmp_path: Path):
    path = tmp_path / "worker.log"
    log = CappedLog(path, max_bytes=1000)
    for first in range(0, 10_000, 37):  # writes of any size, lines of 7 bytes: 70 KB in all
        log.write(_numbered(first, 37))
    log.write(b"a line longer than half the cap, cut where it must be: " + b"y" * 700 + b"\n")
    log.write(b"the last line\n")
    older, newer = path.with_name("worker.log.1").read_bytes(), path.read_bytes()
    assert len(older) <= 500 and len(newer) <= 500
    both = (older + newer).splitlines()
    assert both[-1] == b"the last line" and both[-2].endswith(b"y" * 100)


def test_a_line_is_cut_only_when_it_cannot_fit(tmp_path: Path):
    path = tmp_path / "worker.log"
    log = CappedLog(path, max_bytes=100)
    log.write(_numbered(0, 20))  # 140 bytes: 7 whole lines (49 bytes) fit in a half of 50
    assert path.with_name("worker.log.1").read_bytes() == _numbered(7, 7)
    assert path.read_bytes() == _numbered(14, 6)


def test_an_existing_log_over_the_cap_is_rotated_at_the_first_write(tmp_path: Path):
    path = tmp_path / "worker.log"
    path.write_bytes(b"z" * 5000)
    CappedLog(path, max_bytes=1000).write(b"new\n")
    assert path.read_bytes() == b"new\n" and len(path.with_name("worker.log.1").read_bytes()) == 5000


def test_the_tail_reads_into_the_older_part_when_the_newer_is_short(tmp_path: Path):
    path = tmp_path / "worker.log"
    path.with_name("worker.log.1").write_bytes(_numbered(0, 100) + b"half a li")
    path.write_bytes(b"ne, rotated\n" + _numbered(100, 2))
    assert last_lines(path, 4).splitlines() == ["000099", "half a line, rotated", "000100", "000101"]
    assert last_lines(path, 2).splitlines() == ["000100", "000101"]
    assert last_lines(path, 4, max_bytes=30).splitlines() == ["a line, rotated", "000100", "000101"]  # 30 bytes
    path.with_name("worker.log.1").unlink()
    assert last_lines(path, 4).splitlines() == ["ne, rotated", "000100", "000101"]


def test_the_cap_comes_from_the_daemon_or_is_the_default():
    assert log_max_bytes({LOG_MAX_BYTES_ENV: "1048576"}) == 1 << 20
    for bad in ({}, {LOG_MAX_BYTES_ENV: ""}, {LOG_MAX_BYTES_ENV: "-1"}, {LOG_MAX_BYTES_ENV: "0"}):
        assert log_max_bytes(bad) == DEFAULT_LOG_MAX_BYTES


CAPPED_CHILD = """
import subprocess, sys
from worker.outputs.log_cap import cap_output
threads = cap_output(1 << 20)
print("to stdout", flush=True)
print("to stderr", file=sys.stderr, flush=True)
subprocess.run([sys.executable, "-c", "import sys; print('from a child on stderr', file=sys.stderr)"], check=True)
print(len(threads))
"""


def test_stdout_and_stderr_in_two_files_stay_apart_each_capped(tmp_path: Path):
    """A torchrun rank writes stdout.log and stderr.log: each keeps its own output (before, both went to the
    file of fd 1, and stderr.log stayed empty)."""
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as o, err.open("wb") as e:
        subprocess.run([sys.executable, "-c", CAPPED_CHILD], stdout=o, stderr=e, check=True, cwd=REPO)
    assert out.read_text() == "to stdout\n2\n"
    assert err.read_text() == "to stderr\nfrom a child on stderr\n"


def test_one_file_for_both_is_one_log(tmp_path: Path):
    log = tmp_path / "worker.log"
    with log.open("wb") as f:
        subprocess.run([sys.executable, "-c", CAPPED_CHILD], stdout=f, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    assert log.read_text() == "to stdout\nto stderr\nfrom a child on stderr\n1\n"
