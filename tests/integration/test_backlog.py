"""Every record of a fast worker is stored once, whatever its backlog (issue 20).

Before, the daemon read one 4 MiB chunk of an ended worker's unread metrics.jsonl and looked for its end
record in the file's first 4 MiB only: a backlog larger than that lost its last records and its end, and a
success was judged a failure. A line longer than 4 MiB stopped the job's stream for good.
"""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon, process_group_alive, standin_daemon

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One stand-in daemon for the module: each test runs its own job on it."""
    with standin_daemon(tmp_path_factory.mktemp("backlog") / "ftq", cpu_slots="2") as d:
        yield d


def stored(daemon: Daemon, job_id: int) -> list[tuple[str, int]]:
    """(kind, step) of every record the database holds of the job, read from the database itself."""
    uri = f"file:{daemon.data_dir / 'ftq.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        return db.execute("SELECT kind, step FROM metrics WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()


def assert_every_record_once(daemon: Daemon, job_id: int, steps: int) -> None:
    job = daemon.job(job_id)
    assert job["state"] == "succeeded", job
    assert (job["progress"]["current_steps"], job["progress"]["total_steps"]) == (steps, steps), job["progress"]
    records = stored(daemon, job_id)
    kinds = Counter(kind for kind, _ in records)
    assert kinds["start"] == 1 and kinds["end"] == 1 and records[-1][0] == "end", kinds
    metric_steps = [step for kind, step in records if kind == "metric"]
    assert metric_steps == list(range(1, steps + 1)), (len(metric_steps), metric_steps[-3:])


def test_a_backlog_written_while_no_daemon_watched_is_stored_whole_after_a_restart(daemon: Daemon):
    steps = 40_000  # about 6.3 MiB of records: more than one read of the file held before
    job_id = daemon.submit(tiny_spec(name="burst-held", gpus=0, max_steps=steps))["id"]
    wait_for(lambda: daemon.job(job_id)["state"] == "running", timeout=60, what="the worker to start")
    attempt = daemon.job(job_id)["attempts"][0]
    daemon.stop(signal.SIGKILL)
    (Path(attempt["run_dir"]) / "release-burst").touch()
    wait_for(lambda: not process_group_alive(attempt["pid"]), timeout=60, what="the worker to write and end")
    daemon.start()
    # Killed again while it stores the backlog part by part: the next daemon goes on from the stored offset.
    wait_for(lambda: len(stored(daemon, job_id)) > 4_000, timeout=120, what="part of the backlog to be stored")
    daemon.stop(signal.SIGKILL)
    daemon.start()
    wait_for(lambda: daemon.ended(job_id), timeout=120, interval=0.5, what="the backlog to be stored")
    assert_every_record_once(daemon, job_id, steps)


def test_a_burst_of_300000_records_is_stored_whole_with_the_daemon_up(daemon: Daemon):
    steps = 300_000
    job_id = daemon.submit(tiny_spec(name="burst", gpus=0, max_steps=steps))["id"]
    wait_for(lambda: daemon.ended(job_id), timeout=300, interval=0.5, what="the burst to be stored")
    assert_every_record_once(daemon, job_id, steps)


def test_a_line_longer_than_a_record_is_kept_as_invalid_and_the_stream_goes_on(daemon: Daemon):
    steps = 20
    job_id = daemon.submit(tiny_spec(name="longline", gpus=0, max_steps=steps))["id"]
    wait_for(lambda: daemon.ended(job_id), timeout=60, what="the job to end")
    invalid = daemon.metrics(job_id, kind="invalid")  # a kind the route takes, as the others
    assert invalid == [r for r in daemon.metrics(job_id) if r["kind"] == "invalid"]
    assert len(invalid) == 1 and invalid[0]["size"] > 5 << 20, invalid
    run_dir = Path(daemon.job(job_id)["attempts"][0]["run_dir"])
    with (run_dir / "metrics.jsonl").open("rb") as f:  # the offset and size name the line in the file
        f.seek(invalid[0]["offset"])
        line = f.read(invalid[0]["size"] + 1)
    assert line.startswith(b'{"kind": "metric", "blob": "yyy') and line.endswith(b'"}\n')
    assert invalid[0]["raw"] == line[:2000].decode()
    assert_every_record_once(daemon, job_id, steps)
