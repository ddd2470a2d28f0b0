"""The small limits, against one real daemon (workers: tests/integration/escape_worker.py, which fails with
terminal escape codes in its error): any JSON value in a spec is a 422 naming its key; OPTIONS and 405 list every
method of a path; a database locked by another process is a 503 with Retry-After within seconds; the CLI prints
no control character the daemon sends; a billion-laughs job file and `--set KEY=.inf` are refused in words."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from server.settings import Settings
from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.daemon import Daemon, standin_daemon

pytestmark = pytest.mark.integration

ESCAPE_WORKER = "tests.integration.escape_worker"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    with standin_daemon(tmp_path_factory.mktemp("small") / "ftq", worker_module=ESCAPE_WORKER, cpu_slots="1") as d:
        yield d


def ftq(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in daemon.env.items() if k != "FTQ_API_TOKEN"}
    env["FTQ_URL"] = f"http://127.0.0.1:{daemon.port}"
    command = [sys.executable, "-m", "server.cli", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def errors_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_any_json_value_in_a_spec_is_a_422_naming_its_key(daemon):
    for value in (1, [None]):
        found = errors_of(daemon.http.post("/jobs", json=tiny_spec(without_effect=value)))
        assert "without_effect must be a mapping" in found["without_effect"]
    found = errors_of(daemon.http.post("/jobs", json=tiny_spec(lr_scheduler_kwargs=nested(900))))
    assert "nests deeper than 32 levels" in found["lr_scheduler_kwargs"]
    for token in ("Infinity", "-Infinity", "NaN"):  # what Python's json reads, and JSON has not
        body = json.dumps(tiny_spec())[:-1] + f', "lr_scheduler_kwargs": {{"x": {token}}}}}'
        response = daemon.http.post("/jobs", content=body, headers={"content-type": "application/json"})
        assert "(at x), which is not a finite number" in errors_of(response)["lr_scheduler_kwargs"]
    spec = tiny_spec(lr_scheduler_type="cosine", lr_scheduler_kwargs={"num_cycle": 0.5})
    message = errors_of(daemon.http.post("/jobs", json=spec))["lr_scheduler_kwargs"]
    assert "'num_cycle' is not an argument of the 'cosine' scheduler (it takes num_cycles, last_epoch)" in message
    assert daemon.http.get("/jobs").json()["data"] == []


def test_options_and_405_list_every_method_of_the_path(daemon):
    options = daemon.http.options("/jobs")
    assert options.status_code == 204
    assert {"GET", "POST", "OPTIONS"} <= set(options.headers["allow"].split(", "))
    wrong = daemon.http.delete("/jobs")
    assert wrong.status_code == 405 and {"GET", "POST"} <= set(wrong.headers["allow"].split(", "))
    assert "it takes" in wrong.json()["detail"] and "POST" in wrong.json()["detail"]
    assert "POST" in daemon.http.options("/jobs/1/cancel").headers["allow"]


def test_a_database_locked_by_another_process_is_a_503_within_seconds(daemon):
    """The other writer holds the lock (BEGIN IMMEDIATE) on the daemon's own file. The request's timeout (15 s)
    is five times the API's patience (3 s) and half of what it waited before (32 s): no timing is asserted."""
    database = Settings(data_dir=daemon.data_dir).resolved_database_url.removeprefix("sqlite:///")
    other = sqlite3.connect(database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        response = daemon.http.post("/jobs", json=tiny_spec(name="locked", gpus=0), timeout=15)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] and "busy" in response.json()["detail"]
        assert daemon.http.get("/healthz").status_code == 200  # reads go on meanwhile
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert daemon.http.post("/jobs", json=tiny_spec(name="unlocked", gpus=0)).status_code == 201


def test_the_cli_prints_no_control_character_the_daemon_sends(daemon):
    job = daemon.submit(tiny_spec(name="escapes", gpus=0))
    wait_for(lambda: daemon.ended(job["id"]), timeout=60)
    assert "\x1b" in daemon.job(job["id"])["reason"]  # the daemon keeps the text as it was given
    said = {verb: ftq(daemon, verb, str(job["id"])) for verb in ("status", "events", "logs")}
    for verb, out in said.items():
        assert out.returncode == 0, out.stderr
        assert not any(ch in out.stdout for ch in "\x1b\x07\r"), (verb, out.stdout)
    assert "boom\\x1b[2J\\x1b]0;pwned\\x07\\x0dhere" in said["status"].stdout
    assert "boom\\x1b[2J" in said["events"].stdout
    assert "worker log line\\x1b[2J" in said["logs"].stdout


def test_a_billion_laughs_and_a_number_that_is_not_finite_are_refused_in_words(daemon, tmp_path):
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(
        "name: lol\nlol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 6))
    )  # a million values in 500 bytes
    out = ftq(daemon, "submit", str(laughs))
    assert out.returncode == 1 and f"cannot read {laughs}: its aliases expand to more than 100,000" in out.stderr
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(tiny_spec()))
    out = ftq(daemon, "submit", str(job), "--set", "learning_rate=.inf")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "--set 'learning_rate=.inf': learning_rate is inf, which is not a finite number" in out.stderr
