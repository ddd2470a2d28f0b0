"""What the daemon refuses over HTTP, on a real daemon: big bodies, foreign hosts, cross-origin writes, a full disk,
and a public address without a token."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.conftest import attempt_pids
from tests.integration.daemon import Daemon, free_port, process_group_alive

pytestmark = pytest.mark.integration

BIG = 40 * 1024 * 1024


def stop(daemon: Daemon) -> None:
    """Stop it and its workers, wherever FTQ_DATA_DIR put their run dirs."""
    pids = attempt_pids(daemon) if daemon.proc and daemon.proc.poll() is None else []
    daemon.close()
    for pid in pids:
        if process_group_alive(pid):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def locked(tmp_path) -> Iterator[Daemon]:
    """A daemon with a token."""
    daemon = Daemon(tmp_path / "ftq", api_token="s3cret").start()
    daemon.http.headers["Authorization"] = "Bearer s3cret"
    try:
        yield daemon
    finally:
        stop(daemon)


def slowest_health_check_while(daemon: Daemon, work: threading.Thread) -> float:
    """Poll /healthz while `work` runs; the longest answer time."""
    slowest = 0.0
    with httpx.Client(base_url=daemon.http.base_url, timeout=30) as probe:
        work.start()
        while work.is_alive():
            started = time.monotonic()
            assert probe.get("/healthz").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
    work.join()
    return slowest


def test_a_big_body_without_a_token_is_refused_unread_and_healthz_answers_meanwhile(locked: Daemon):
    # 40 MB of a JSON array: costly to parse, which is what a route dependency would have done before the 401.
    body = b"[" + b"0," * (BIG // 2) + b"0]"
    outcome: dict[str, object] = {}

    def send() -> None:
        started = time.monotonic()
        try:
            with httpx.Client(base_url=locked.http.base_url, timeout=60) as anonymous:
                response = anonymous.post("/jobs", content=body, headers={"content-type": "application/json"})
                outcome["status"], outcome["body"] = response.status_code, response.json()
        except httpx.TransportError as exc:  # the daemon may close the connection on the unread rest
            outcome["status"] = repr(exc)
        outcome["took"] = time.monotonic() - started

    slowest = slowest_health_check_while(locked, threading.Thread(target=send))
    assert outcome["status"] == 401, outcome.get("status")
    assert "Bearer" in outcome["body"]["detail"]  # type: ignore[index]
    assert outcome["took"] < 5, outcome
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s while the body was refused"


def test_a_streamed_body_over_the_limit_is_cut_without_content_length(locked: Daemon):
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(BIG // 65536):
            yield b"x" * 65536

    outcome: dict[str, object] = {}

    def send() -> None:
        started = time.monotonic()
        try:
            response = locked.http.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
            outcome["status"], outcome["body"] = response.status_code, response.json()
        except httpx.TransportError as exc:
            outcome["status"] = repr(exc)
        outcome["took"] = time.monotonic() - started

    slowest = slowest_health_check_while(locked, threading.Thread(target=send))
    assert outcome["status"] == 413, outcome.get("status")
    assert "FTQ_MAX_BODY_BYTES" in outcome["body"]["detail"]  # type: ignore[index]
    assert outcome["took"] < 10 and slowest < 1.0, (outcome, slowest)
    assert locked.http.get("/jobs").json()["count"] == 0


def test_a_foreign_host_is_refused_and_healthz_answers_any(daemon: Daemon):
    refused = daemon.http.get("/jobs", headers={"Host": f"evil.example:{daemon.port}"})
    assert refused.status_code == 400 and refused.headers["content-type"] == "application/json"
    assert "FTQ_ALLOWED_HOSTS=evil.example" in refused.json()["detail"]
    assert daemon.http.get("/jobs", headers={"Host": f"localhost:{daemon.port}"}).status_code == 200
    assert daemon.http.get("/healthz", headers={"Host": "10.9.8.7"}).status_code == 200


def test_a_cross_origin_post_cannot_cancel_a_job_and_the_cli_still_can(daemon: Daemon):
    job = daemon.submit(tiny_spec(gpus=0, max_steps=100_000, save_steps=100_000))
    wait_for(lambda: daemon.job(job["id"])["state"] == "running", timeout=120, what="the job to run")
    cancel = f"/jobs/{job['id']}/cancel"
    # What a web page's <form> or fetch(..., {mode: "no-cors"}) sends: a "simple" request, no preflight.
    page = daemon.http.post(
        cancel, content=b"x", headers={"Origin": "http://evil.example", "Content-Type": "text/plain"}
    )
    assert page.status_code == 403 and "FTQ_ALLOWED_ORIGINS" in page.json()["detail"]
    no_origin = daemon.http.post(cancel, headers={"Sec-Fetch-Site": "cross-site"})
    assert no_origin.status_code == 403
    typed = daemon.http.post(cancel, content=b"x", headers={"Content-Type": "text/plain"})
    assert typed.status_code == 415 and "application/json" in typed.json()["detail"]
    time.sleep(1)
    assert daemon.job(job["id"])["state"] == "running"
    cli = subprocess.run(
        [sys.executable, "-m", "server.cli", "cancel", str(job["id"])],
        cwd=REPO,
        env={**os.environ, "FTQ_URL": f"http://127.0.0.1:{daemon.port}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0 and "cancel" in cli.stdout, cli.stderr
    wait_for(lambda: daemon.job(job["id"])["state"] == "cancelled", timeout=60, what="the cancel")


def test_a_public_address_without_a_token_does_not_serve(tmp_path):
    env = {"PATH": os.environ["PATH"], "FTQ_DATA_DIR": str(tmp_path), "FTQ_INPUT_DIRS": str(REPO)}
    command = [sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "refusing to serve on 0.0.0.0" in result.stderr
    assert "FTQ_API_TOKEN" in result.stderr and "--insecure" in result.stderr


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_answers_json_507_and_the_daemon_recovers_when_space_returns(tmp_path, tiny_disk: Path):
    daemon = Daemon(tmp_path / "ftq", cpu_slots="1")
    daemon.env["FTQ_DATA_DIR"] = str(tiny_disk)  # the database on the tiny disk, the daemon's log beside it
    daemon.start()
    try:
        filler = tiny_disk / "filler"
        with filler.open("wb") as f, pytest.raises(OSError) as full:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        assert full.value.errno == errno.ENOSPC
        refused = daemon.http.post("/jobs", json=tiny_spec(gpus=0, name="on-a-full-disk"))
        assert refused.status_code == 507 and refused.headers["content-type"] == "application/json"
        assert "disk is full" in refused.json()["detail"] and str(tiny_disk) in refused.json()["detail"]
        # Before, /healthz stayed 200 while every write failed.
        unhealthy = wait_for(lambda: (r := daemon.http.get("/healthz")).status_code == 503 and r, timeout=15)
        assert "MiB free" in unhealthy.json()["detail"], unhealthy.text
        filler.unlink()
        wait_for(lambda: daemon.http.get("/healthz").status_code == 200, timeout=15, what="health to return")
        job = daemon.submit(tiny_spec(gpus=0, name="after-space-returned"))
        assert daemon.http.post(f"/jobs/{job['id']}/cancel").status_code == 200
    finally:
        stop(daemon)
