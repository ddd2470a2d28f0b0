"""One job, one live attempt, always: cancel and requeue from 8 threads against real workers.

Before, a cancel of a queued job was a compare-and-set that accepted {queued, cancelling} as sources:
a cancel that read "queued" still succeeded after the job had become starting -> cancelling, with its
attempt alive; a requeue then started a second attempt (two workers of one job for about 0.23 s, in 1
run of 4), and leases were seen held by jobs that read cancelled or queued.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from scheduler.local.supervisor import same_process
from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import TERMINAL, Daemon
from worker.spec.gate import read_pid_file

pytestmark = pytest.mark.integration

LIVE = ("starting", "running", "cancelling")
STRESS_S = 40.0


def violations(db_path: Path) -> list[str]:
    """Every broken invariant in one consistent snapshot of the database (one read transaction)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        db.execute("BEGIN")
        jobs = dict(db.execute("SELECT id, state FROM jobs").fetchall())
        live = db.execute("SELECT job_id, id, run_dir FROM attempts WHERE ended_at IS NULL").fetchall()
        leases = db.execute(
            "SELECT l.resource, l.job_id, a.ended_at FROM leases l JOIN attempts a ON a.id = l.attempt_id"
        ).fetchall()
        runs = db.execute("SELECT job_id, run_dir FROM attempts").fetchall()
        db.execute("COMMIT")
    finally:
        db.close()
    found = []
    per_job: dict[int, int] = {}
    for job_id, _attempt, _run_dir in live:
        per_job[job_id] = per_job.get(job_id, 0) + 1
        if jobs[job_id] not in LIVE:
            found.append(f"job {job_id} is {jobs[job_id]} with a live attempt")
    found += [f"job {job_id} has {n} live attempts" for job_id, n in per_job.items() if n > 1]
    for resource, job_id, ended_at in leases:
        if jobs[job_id] not in LIVE or ended_at is not None:
            found.append(f"{resource} is leased by job {job_id}, which is {jobs[job_id]} (attempt ended: {ended_at})")
    alive: dict[int, int] = {}
    for job_id, run_dir in runs:
        pid = read_pid_file(Path(run_dir))
        if pid is not None and same_process(*pid):
            alive[job_id] = alive.get(job_id, 0) + 1
    found += [f"job {job_id} has {n} live workers" for job_id, n in alive.items() if n > 1]
    return found


def test_cancel_and_requeue_from_eight_threads_never_run_a_job_twice(tmp_path: Path):
    data_dir = tmp_path / "ftq"
    daemon = Daemon(data_dir, fake_gpus="2x24GiB", cpu_slots="1", cancel_grace_s="3").start()
    try:
        ids = [daemon.submit(tiny_spec(name=f"race-{i}", gpus=min(i, 1), max_steps=100_000))["id"] for i in range(3)]
        for job_id in ids:
            wait_for(lambda j=job_id: daemon.job(j)["state"] == "running", timeout=120, what=f"job {job_id} to run")
        stop = threading.Event()
        problems: list[str] = []
        statuses: dict[int, int] = {}
        snapshots = 0

        def hammer(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                job_id, action = rng.choice(ids), rng.choice(("cancel", "requeue"))
                response = daemon.http.post(f"/jobs/{job_id}/{action}")
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code not in (200, 409):
                    problems.append(f"{action} {job_id}: {response.status_code} {response.text[:300]}")
                time.sleep(rng.uniform(0, 0.05))

        def watch() -> None:
            nonlocal snapshots
            while not stop.is_set():
                problems.extend(violations(data_dir / "ftq.db"))
                snapshots += 1
                time.sleep(0.05)

        threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
        threads.append(threading.Thread(target=watch))
        for thread in threads:
            thread.start()
        time.sleep(STRESS_S)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not problems, problems[:20]
        assert snapshots > 100 and statuses.get(200, 0) > 50, (snapshots, statuses)

        # Settle: cancel whatever runs; nothing may stay cancelling, no worker may be left.
        for job_id in ids:
            if daemon.job(job_id)["state"] not in TERMINAL:
                daemon.http.post(f"/jobs/{job_id}/cancel")
        for job_id in ids:
            job = wait_for(lambda j=job_id: daemon.ended(j), timeout=120, what=f"job {job_id} to end")
            assert job["state"] in TERMINAL
        assert violations(data_dir / "ftq.db") == []
        db = sqlite3.connect(data_dir / "ftq.db")
        assert db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'cancelling'").fetchone() == (0,)
        run_dirs = [Path(r) for (r,) in db.execute("SELECT run_dir FROM attempts").fetchall()]
        db.close()
        left = [pid for pid in map(read_pid_file, run_dirs) if pid is not None and same_process(*pid)]
        assert left == [], f"workers left: {left}"
        assert len(run_dirs) > len(ids), "the requeues started new attempts"
    finally:
        daemon.close()
