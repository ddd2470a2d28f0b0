"""No instant of a daemon crash leaves a worker untracked (the start gate, worker.spec.gate).

The daemon SIGKILLs itself (FTQ_DAEMON_FAULT) at each point of a worker's start: after the attempt is
stored, after the worker is spawned, after its pid is stored, after it is told to go. After a restart,
every worker process that was ever started is either adopted or gone, and the job ends in the state its
worker's last `end` record says. Before the gate, a kill within ~6 ms of a submit left an attempt without
a pid: the job read "failed: unknown exit status" while its worker trained on to success, untracked.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from scheduler.local.supervisor import same_process
from scheduler.loop import FAULT_POINTS
from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon
from worker.spec.gate import read_pid_file

pytestmark = pytest.mark.integration


def end_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, filter(None, lines)) if r.get("kind") == "end"]


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_daemon_killed_around_a_workers_start_leaves_no_worker_untracked(tmp_path: Path, point: str):
    data_dir = tmp_path / "ftq"
    daemon = Daemon(data_dir, fake_gpus="1x24GiB", cpu_slots="0", daemon_fault=f"sigkill@{point}").start()
    try:
        job_id = daemon.submit(tiny_spec(max_steps=4, logging_steps=1))["id"]
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=60) == -signal.SIGKILL, daemon.log()[-2000:]

        del daemon.env["FTQ_DAEMON_FAULT"]
        daemon.start()
        job = wait_for(lambda: daemon.ended(job_id), timeout=180, interval=0.5, what="the job to end")
        runs = sorted((data_dir / "runs" / f"job-{job_id}").glob("attempt-*"))
        # Every worker that was ever started is gone now (adopted and reaped, or stopped).
        started = [found for found in map(read_pid_file, runs) if found is not None]
        for pid, start_time in started:
            assert not same_process(pid, start_time), f"worker {pid} outlived its attempt ({point})"
        assert job["state"] == "succeeded", job
        last = end_records(Path(job["attempts"][-1]["run_dir"]))
        assert [r["status"] for r in last] == ["succeeded"]
        for attempt in job["attempts"]:
            assert attempt["ended_at"] is not None
        if point == "after-go":  # told to go before the kill: it trained on, and the new daemon adopted it
            assert len(job["attempts"]) == 1 and job["attempts"][0]["adopted"], job["attempts"]
        else:  # it never trained; the job went back to the queue and ran once, whole
            first, second = job["attempts"]
            assert first["state"] == "failed" and "never started training" in first["reason"], first
            assert [r["status"] for r in end_records(Path(first["run_dir"]))] in ([], ["not_started"])
            assert second["resumed_from_step"] is None
    finally:
        daemon.close()
