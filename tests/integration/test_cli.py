"""The CLI as a person runs it: `python -m server.cli ...` subprocesses against a real daemon.

`ftq watch` in a pseudo-terminal (it redraws in place, with bars, percentages and ETAs) and
into a pipe (a line per change), across a daemon restart; `ftq logs -f`, `ftq events`,
`ftq compare`, `ftq status`, `ftq estimate`, `ftq --version`, and the errors in the CLI's words.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.daemon import Daemon, free_port, standin_daemon

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CHANGE_LINE = re.compile(r"^\d\d:\d\d:\d\d  job (\d+)  (\S+)  (\w+)  (\S+)  loss (\S+)")


def ftq_env(daemon: Daemon, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FTQ_API_TOKEN", "COLUMNS", "LINES")}
    return {**env, "FTQ_URL": f"http://127.0.0.1:{daemon.port}", "PYTHONPATH": str(REPO), **extra}


def ftq(daemon: Daemon, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "server.cli", *args]
    return subprocess.run(command, env=ftq_env(daemon, **extra), cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture
def slow_daemon(tmp_path, monkeypatch) -> Iterator[Daemon]:
    """A daemon whose stand-in workers take 0.15 s a step: a 20-step job shows a few seconds of progress."""
    monkeypatch.setenv("STANDIN_STEP_S", "0.15")
    with standin_daemon(tmp_path / "ftq", fake_gpus="2x24GiB", cpu_slots="1") as daemon:
        yield daemon


def run_in_terminal(command: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run `command` with a pseudo-terminal of 160 x 40 as its stdin, stdout and stderr; its exit and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            assert ready, f"no output for {timeout} s: {b''.join(chunks)[-2000:]!r}"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end closed, the process is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_watch_in_a_terminal_redraws_in_place_with_bars_and_etas(slow_daemon):
    first = slow_daemon.submit(tiny_spec(name="billing", max_steps=30))
    second = slow_daemon.submit(tiny_spec(name="accounts", gpus=0, max_steps=12))
    command = [sys.executable, "-m", "server.cli", "watch", str(first["id"]), str(second["id"])]
    code, output = run_in_terminal(command, ftq_env(slow_daemon))
    assert code == 0, output[-3000:]
    assert "\x1b[1A" in output and "\x1b[2K" in output, "rich's Live moves the cursor up and redraws"
    assert "━" in output, "progress bars"
    plain = ANSI.sub("", output)
    running = [line for line in plain.splitlines() if " running " in line]
    # A running job's line: the bar, a percentage under 100, its step, and an ETA ("2s", "1m05s").
    progressing = [line for line in running if re.search(r"\b([1-9]|[1-9]\d)%\s+\d+/30\s+\d+(s|m\d\ds)\b", line)]
    assert progressing, plain[-3000:]
    assert "LOSS FIRST -> LAST" in plain and "1.0000 -> 0.0333" in plain  # the summary, once both ended
    assert f"dashboard: http://127.0.0.1:{slow_daemon.port}/" in plain


def test_watch_into_a_pipe_prints_a_line_per_change(slow_daemon):
    job = slow_daemon.submit(tiny_spec(name="billing", max_steps=20))
    done = ftq(slow_daemon, "watch", str(job["id"]))
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    lines = [m.groups() for m in map(CHANGE_LINE.match, done.stdout.splitlines()) if m]
    assert lines and all(line[0] == str(job["id"]) and line[1] == "billing" for line in lines)
    assert lines[-1][2:] == ("succeeded", "20/20", "0.0500")
    assert len(lines) == len(set(lines)), "a line only when something changed"
    assert len(lines) >= 3, done.stdout  # it saw the job before it ended, not only its end
    assert "LOSS FIRST -> LAST" in done.stdout


def test_watch_and_events_survive_a_daemon_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_STEP_S", "0.3")
    with standin_daemon(tmp_path / "ftq", fake_gpus="2x24GiB", cpu_slots="1") as daemon:
        job = daemon.submit(tiny_spec(name="survivor", max_steps=25))
        env = ftq_env(daemon)
        base = [sys.executable, "-m", "server.cli"]
        popen = {"env": env, "cwd": REPO, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        watch = subprocess.Popen([*base, "watch", str(job["id"])], **popen)  # type: ignore[call-overload]
        events = subprocess.Popen([*base, "events", str(job["id"]), "--json"], **popen)  # type: ignore[call-overload]
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(watch.stdout), daemon=True)
        reader.start()
        wait_for(lambda: (daemon.job(job["id"])["progress"] or {}).get("current_steps", 0) >= 3, what="step 3")
        daemon.stop()
        said = wait_for(
            lambda: watch.poll() is not None or any("daemon unreachable, reconnecting" in line for line in seen),
            what=f"the watch to say the daemon is unreachable; it printed {seen}",
        )
        assert said and watch.poll() is None, ("".join(seen), watch.stderr.read() if watch.stderr else "")
        daemon.start()
        assert watch.wait(timeout=60) == 0
        reader.join(timeout=10)
        out, err = events.communicate(timeout=60)
        assert events.returncode == 0, err
    text = "".join(seen)
    assert "daemon reachable again" in text
    finals = [m.groups() for m in map(CHANGE_LINE.match, text.splitlines()) if m]
    assert finals[-1][2:4] == ("succeeded", "25/25"), text
    # The event stream resumed after its last event: each record once, in order, and it ended with the job.
    received = [json.loads(line) for line in out.splitlines()]
    ids = [event["id"] for event in received]
    assert ids == sorted(set(ids))
    steps = [event["data"]["record"]["current_steps"] for event in received if event["event"] == "metric"]
    assert steps == list(range(1, 26))
    assert received[-1]["event"] == "state" and received[-1]["data"]["state"] == "succeeded"
    assert "unreachable, reconnecting" in err


def test_events_prints_a_jobs_history_and_ends_with_it(slow_daemon):
    job = slow_daemon.submit(tiny_spec(name="billing", max_steps=4))
    wait_for(lambda: slow_daemon.ended(job["id"]), what="the job to end")
    done = ftq(slow_daemon, "events", str(job["id"]))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.match(rf"#\d+ \S+ job {job['id']} billing: queued$", lines[0]), lines
    assert any(re.search(r"metric: step 4/4, loss 0\.2500", line) for line in lines), lines
    assert lines[-1].endswith("billing: succeeded"), lines
    after = int(lines[-2].split()[0][1:])  # resume after the next-to-last: only the last comes
    tail = ftq(slow_daemon, "events", str(job["id"]), "--after", str(after), "--json")
    assert [json.loads(line)["data"]["state"] for line in tail.stdout.splitlines()] == ["succeeded"]


def test_logs_follow_prints_the_whole_log_until_the_job_ends(daemon):
    job = daemon.submit(tiny_spec(name="logged", gpus=0, max_steps=4))
    done = ftq(daemon, "logs", str(job["id"]), "-f")
    assert done.returncode == 0, done.stderr
    ended = daemon.job(job["id"])
    assert ended["state"] == "succeeded"
    log_file = Path(ended["attempts"][-1]["run_dir"]) / "worker.log"
    assert done.stdout and done.stdout == log_file.read_text(errors="replace")
    # The server side: ?offset= gives the bytes after it and the next offset; ?tail= is as it was.
    size = log_file.stat().st_size
    part = daemon.http.get(f"/jobs/{job['id']}/logs", params={"offset": size - 10})
    assert part.content == log_file.read_bytes()[-10:] and part.headers["x-log-offset"] == str(size)
    assert part.headers["x-log-attempt"] == "1"
    past = daemon.http.get(f"/jobs/{job['id']}/logs", params={"offset": size + 5})
    assert past.content == log_file.read_bytes()  # past the end: from the start
    tail = daemon.http.get(f"/jobs/{job['id']}/logs", params={"tail": 2})
    assert tail.text.splitlines() == log_file.read_text().splitlines()[-2:]
    # A real worker's records: compare has its speed, and its result where GET /jobs/{id} says.
    (row,) = daemon.http.get("/compare", params={"ids": [job["id"]]}).json()["data"]
    assert row["tokens_per_s"] > 0 and row["result"] == ended["result"] and row["result"]
    assert f"job {job['id']} (logged): result in {ended['result']}" in ftq(daemon, "compare", str(job["id"])).stdout


def test_compare_status_estimate_and_version_in_words(slow_daemon):
    first = slow_daemon.submit(tiny_spec(name="billing", max_steps=4))
    second = slow_daemon.submit(tiny_spec(name="accounts", gpus=0, max_steps=2))
    wait_for(lambda: slow_daemon.ended(first["id"]) and slow_daemon.ended(second["id"]), what="both jobs to end")

    compare = ftq(slow_daemon, "compare", str(first["id"]), str(second["id"]))
    assert compare.returncode == 0, compare.stderr
    header, one, two = compare.stdout.splitlines()[:3]
    assert header.split()[:5] == ["ID", "NAME", "STATE", "LOSS", "EVAL"]
    assert one.split()[:4] == [str(first["id"]), "billing", "succeeded", "0.2500"]
    assert two.split()[:4] == [str(second["id"]), "accounts", "succeeded", "0.5000"]

    status = ftq(slow_daemon, "status", str(first["id"]))
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[:2] == [
        f"job {first['id']} (billing): succeeded, ran on GPU 0",
        "  progress: step 4/4 (100%), loss 0.2500",
    ]
    assert "attempts: 1 (1: succeeded at step 4)" in status.stdout
    whole = json.loads(ftq(slow_daemon, "status", str(first["id"]), "--json").stdout)
    assert whole == slow_daemon.job(first["id"])

    estimate = ftq(slow_daemon, "estimate", str(REPO / "configs/jobs/accounts.yaml"), "--set", "gpus=1")
    assert estimate.returncode == 0, estimate.stderr
    assert re.match(r"The job needs about \d+\.\d GiB on each of 1 GPU\(s\)", estimate.stdout), estimate.stdout
    assert "It fits now on CUDA_VISIBLE_DEVICES=" in estimate.stdout
    huge = ftq(slow_daemon, "estimate", str(REPO / "configs/jobs/accounts.yaml"), "--set", "gpus=3")
    assert huge.returncode == 1 and "Problem: gpus: the job asks for 3" in huge.stdout, huge.stdout + huge.stderr

    version = ftq(slow_daemon, "--version")
    assert version.stdout.strip() == f"ftq {importlib.metadata.version('ftq')}"
    for args in (("status", "999"), ("logs", "999", "-f"), ("watch", "999"), ("compare", "999")):
        missing = ftq(slow_daemon, *args)
        assert missing.returncode == 1 and "no job 999: run `ftq list`" in missing.stderr, (args, missing.stderr)


def test_errors_in_the_clis_words(tmp_path):
    with standin_daemon(tmp_path / "ftq", api_token="s3cret") as daemon:
        bare = ftq(daemon, "list")
        assert bare.returncode == 1 and bare.stderr.strip() == "ftq: the daemon wants a token: set FTQ_API_TOKEN"
        wrong = ftq(daemon, "list", FTQ_API_TOKEN="nope")
        assert wrong.returncode == 1 and "refused the token in FTQ_API_TOKEN" in wrong.stderr
        assert ftq(daemon, "list", FTQ_API_TOKEN="s3cret").returncode == 0
    nobody = ftq(daemon, "status", "1", FTQ_URL=f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 1 and "cannot reach the daemon at" in nobody.stderr and "ftq serve" in nobody.stderr


def test_watch_without_ids_follows_the_jobs_not_yet_ended(slow_daemon):
    nothing = ftq(slow_daemon, "watch")
    assert nothing.returncode == 0 and "nothing to watch: no job is queued or running" in nothing.stdout
    job = slow_daemon.submit(tiny_spec(name="billing", max_steps=8))
    done = ftq(slow_daemon, "watch")
    assert done.returncode == 0, done.stderr
    lines = [m.groups() for m in map(CHANGE_LINE.match, done.stdout.splitlines()) if m]
    assert lines[-1][:4] == (str(job["id"]), "billing", "succeeded", "8/8")


def test_watch_rereads_on_events_at_most_four_times_a_second(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_STEP_S", "0.02")  # 50 records a second
    with standin_daemon(tmp_path / "ftq", fake_gpus="2x24GiB", cpu_slots="1") as daemon:
        job = daemon.submit(tiny_spec(name="chatty", max_steps=150))
        wait_for(lambda: daemon.job(job["id"])["state"] == "running", what="the job to run")
        before = daemon.log().count(f'"GET /jobs/{job["id"]} HTTP')
        started = time.monotonic()
        done = ftq(daemon, "watch", str(job["id"]), "--interval", "30")
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        reads = daemon.log().count(f'"GET /jobs/{job["id"]} HTTP') - before - 1  # less the summary's
    print(f"\nwatch: {reads} re-reads in {took:.1f} s")
    assert reads <= 4 * took + 2, (reads, took)
    assert reads >= 3, (reads, took)  # the events, not the 30 s timer, made it read again
