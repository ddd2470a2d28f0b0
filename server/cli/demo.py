"""`ftq demo` (what `make run` runs): a daemon, the shipped customer-service jobs, a live table, a report.

It starts its own daemon on a free port with the user's FTQ_* settings, so the
demo is the real path: HTTP submit, placement, worker subprocesses, metrics.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from server.cli.client import TERMINAL, Client
from server.cli.jobfiles import load_spec
from server.cli.tables import summary_table
from server.cli.watch import watch

JOBS_DIR = Path("configs/jobs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(port: int, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`ftq serve` on `port` in a process of its own, its output in `log_path`; `env`: its environment (ours)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def wait_healthy(client: Client, daemon: subprocess.Popen[bytes], log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"ftq demo: the daemon exited with {daemon.returncode}; see {log_path}")
        try:
            if client.http.get("/healthz").status_code == 200:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"ftq demo: the daemon did not answer within {timeout:.0f}s; see {log_path}")


def reopen_hint(data_dir: Path, port: int = 8000) -> str:
    """How to look at the demo's jobs again once its daemon is gone: a daemon on the same data dir, started by
    the `ftq` beside this Python (`make run`'s .venv/bin/ftq, which need not be on PATH)."""
    ftq = Path(sys.executable).parent / "ftq"
    command = os.path.relpath(ftq) if ftq.exists() and not os.path.relpath(ftq).startswith("..") else "ftq"
    return (
        f"\nThe jobs, their records and results stay in {data_dir.resolve()}. To look at them again in the "
        f"dashboard: `FTQ_DATA_DIR={data_dir} {command} serve --port {port}`, then open http://127.0.0.1:{port}/"
    )


def run_demo(job_files: list[Path] | None) -> int:
    files = job_files or sorted(JOBS_DIR.glob("*.yaml"))
    if not files:
        raise SystemExit(f"ftq demo: no job files in {JOBS_DIR}")
    data_dir = Path(os.environ.get("FTQ_DATA_DIR", "ftq-data"))
    log_path = data_dir / "daemon.log"
    port = free_port()
    daemon = start_daemon(port, log_path)
    client = Client(f"http://127.0.0.1:{port}")
    ids: list[int] = []
    try:
        wait_healthy(client, daemon, log_path)
        gpus = client.request("GET", "/gpus")
        overrides: list[str] = []
        print(f"ftq daemon on http://127.0.0.1:{port} (log: {log_path}); GPUs: {gpus['probe']}")
        if not gpus["gpus"]:
            print(f"No GPUs here: the jobs run with gpus: 0 on CPU slots ({gpus['cpu_slots']} at a time).")
            overrides = ["gpus=0"]
        for path in files:
            job = client.request("POST", "/jobs", json=load_spec(path, overrides))
            ids.append(job["id"])
            print(f"submitted job {job['id']} ({job['name']}) from {path}")
        print(f"The dashboard, while the demo runs: {client.dashboard()}")
        started = time.monotonic()
        jobs = watch(client, ids)
        print(f"\nAll {len(jobs)} jobs ended in {time.monotonic() - started:.1f} s:\n")
        print(summary_table(client, jobs))
        print(reopen_hint(data_dir))
        return 0 if all(j["state"] == "succeeded" for j in jobs) else 1
    except KeyboardInterrupt:
        print("\nInterrupted: cancelling the demo's jobs ...")
        for job_id in ids:
            job = client.request("GET", f"/jobs/{job_id}")
            if job["state"] not in TERMINAL:
                client.request("POST", f"/jobs/{job_id}/cancel")
        watch(client, ids, out=open(os.devnull, "w"))
        return 130
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
