"""Views past the first thousand: GET /jobs newest first with the count, `ftq list` and `ftq watch` over every
job, and a job's chart of 100,000 records read whole (thinned on the server) to its last step.

One daemon for the module, on a data dir filled before it starts (tests/integration/many_jobs.py): 1,005 queued
jobs that no CPU slot will ever take, and job 1,006, ended, with 100,000 metric records.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.cli.client import Client
from server.cli.watch import join_active
from tests.integration.daemon import Daemon, standin_daemon
from tests.integration.many_jobs import fill_jobs, loss_at
from tests.integration.test_cli import ftq

pytestmark = pytest.mark.integration

JOBS = 1006
RECORDS = 100_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    data_dir: Path = tmp_path_factory.mktemp("views") / "ftq"
    fill_jobs(data_dir, JOBS, state="queued", records_of_last=RECORDS)
    with standin_daemon(data_dir, cpu_slots="0") as started:
        yield started


def test_get_jobs_pages_the_newest_first_with_the_count(daemon: Daemon) -> None:
    first = daemon.http.get("/jobs", params={"order": "newest", "limit": 100}).json()
    assert first["count"] == JOBS
    assert [job["id"] for job in first["data"]] == list(range(JOBS, JOBS - 100, -1))
    last = daemon.http.get("/jobs", params={"order": "newest", "offset": 1000, "limit": 100}).json()
    assert [job["id"] for job in last["data"]] == [6, 5, 4, 3, 2, 1]
    # The default stays the oldest first: a client that pages so is not moved by each new job.
    oldest = daemon.http.get("/jobs", params={"limit": 3}).json()
    assert [job["id"] for job in oldest["data"]] == [1, 2, 3] and oldest["count"] == JOBS
    queued = daemon.http.get("/jobs", params={"order": "newest", "state": "queued", "limit": 1}).json()
    assert queued["data"][0]["id"] == JOBS - 1 and queued["count"] == JOBS - 1
    refused = daemon.http.get("/jobs", params={"order": "sideways"})
    assert refused.status_code == 422 and "order" in refused.text


def test_ftq_list_shows_the_newest_and_how_many_there_are(daemon: Daemon) -> None:
    shown = ftq(daemon, "list")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].split()[:2] == [str(JOBS), f"job-{JOBS}"]  # under the header: the newest
    assert len(lines) == 1 + 50 + 1
    assert lines[-1] == "1,006 jobs, the newest first: showing 1-50; --offset 50 for the next, --all for every one"
    page = ftq(daemon, "list", "--offset", "1000", "--limit", "10").stdout.splitlines()
    assert [line.split()[0] for line in page[1:-1]] == ["6", "5", "4", "3", "2", "1"]
    assert page[-1] == "1,006 jobs, the newest first: showing 1,001-1,006"
    everything = ftq(daemon, "list", "--all").stdout.splitlines()
    assert len(everything) == 1 + JOBS + 1 and everything[-1] == "1,006 jobs, the newest first"
    assert "--all" in ftq(daemon, "list", "--help").stdout


def test_watch_without_ids_follows_every_active_job(daemon: Daemon) -> None:
    watched = [3]  # an id given first keeps its place
    join_active(Client(f"http://127.0.0.1:{daemon.port}"), watched)
    assert watched == [3, 1, 2, *range(4, JOBS)]  # every queued job, not the first 1,000 of them


def test_a_chart_of_100000_records_reads_them_all_to_the_last_step(daemon: Daemon) -> None:
    records = daemon.metrics(JOBS, points=2000)
    metric = [r for r in records if r["kind"] == "metric"]
    assert 1000 < len(metric) <= 2000
    assert metric[0]["current_steps"] == 1 and metric[-1]["current_steps"] == RECORDS  # the last step
    assert records[0]["kind"] == "start" and records[-1]["kind"] == "end"
    steps = [r["current_steps"] for r in metric]
    assert steps == sorted(set(steps))
    lowest = min(range(1, RECORDS + 1), key=loss_at)
    assert lowest in steps  # the curve's lowest point is kept, not smoothed away
    assert daemon.metrics(JOBS, points=2000, kind="metric")[-1]["current_steps"] == RECORDS
    # Without points, the first `limit` records, as before.
    assert len(daemon.metrics(JOBS)) == 10_000
    assert daemon.http.get(f"/jobs/{JOBS}/metrics", params={"points": 2}).status_code == 422
