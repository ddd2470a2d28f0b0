"""A real daemon for tests: `ftq serve` in a subprocess, uvicorn on a free port, a temporary data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import REPO

TERMINAL = {"succeeded", "failed", "oom", "cancelled"}
STANDIN_WORKER = "tests.integration.standin_worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "FTQ_DATA_DIR": str(data_dir),
            "FTQ_INPUT_DIRS": str(REPO),
            "FTQ_CANCEL_GRACE_S": "5",
            "FTQ_TICK_S": "0.5",
            **{f"FTQ_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec_fn: Callable[[], None] | None = None  # e.g. lower its open-file limit (runs in the child)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def start(self, timeout: float = 60) -> Daemon:
        log = (self.data_dir / "daemon.log").open("ab") if self.data_dir.exists() else None
        if log is None:
            self.data_dir.mkdir(parents=True)
            log = (self.data_dir / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited: {self.log()[-3000:]}"
            try:
                if self.http.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon did not come up: {self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def kill_workers(self) -> None:
        """SIGKILL every worker any attempt under this data dir ever started (they outlive a stopped daemon)."""
        from scheduler.local.supervisor import same_process
        from worker.spec.gate import read_pid_file

        for run_dir in (self.data_dir / "runs").glob("job-*/attempt-*"):
            found = read_pid_file(run_dir)
            if found is not None and same_process(*found):
                try:
                    os.killpg(found[0], signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        """Stop the daemon and leave no worker of it behind to disturb the next test."""
        self.stop()
        self.kill_workers()

    def log(self) -> str:
        return (self.data_dir / "daemon.log").read_text(errors="replace")

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/jobs", json=spec)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def metrics(self, job_id: int, **params: Any) -> list[dict[str, Any]]:
        response = self.http.get(f"/jobs/{job_id}/metrics", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def ended(self, job_id: int) -> dict[str, Any] | None:
        job = self.job(job_id)
        return job if job["state"] in TERMINAL else None


@contextmanager
def standin_daemon(data_dir: Path, worker_module: str = STANDIN_WORKER, **settings: str) -> Iterator[Daemon]:
    """A started daemon whose workers are a stand-in from this repo (by default tests/integration/standin_worker.py);
    closed after."""
    daemon = Daemon(data_dir, worker_module=worker_module, **settings)
    daemon.env["PYTHONPATH"] = str(REPO)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.close()


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
