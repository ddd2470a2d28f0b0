from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.db.engine import make_engine, upgrade_database
from server.db.store import SqlStore
from server.settings import Settings
from tests.integration.daemon import Daemon, process_group_alive


def attempt_pids(daemon: Daemon) -> list[int]:
    jobs = daemon.http.get("/jobs", params={"limit": 1000}).json()["data"]
    return [a["pid"] for job in jobs for a in daemon.job(job["id"])["attempts"] if a["pid"]]


@pytest.fixture
def daemon(tmp_path) -> Iterator[Daemon]:
    """A real daemon with two fake 24 GiB GPUs and one CPU slot."""
    d = Daemon(tmp_path / "ftq", fake_gpus="2x24GiB", cpu_slots="1").start()
    try:
        yield d
    finally:
        pids = attempt_pids(d) if d.proc and d.proc.poll() is None else []
        d.stop()
        for pid in pids:  # never leave a worker behind to disturb the next test
            if process_group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        d.kill_workers()


@pytest.fixture
def store(tmp_path: Path) -> SqlStore:
    """The real store on a fresh SQLite database in tmp_path, migrated by Alembic: no daemon, no processes."""
    engine = make_engine(Settings(data_dir=tmp_path))
    upgrade_database(engine)
    return SqlStore(engine)
