"""The event streams against a real daemon: a job's whole story in order, resumed by Last-Event-ID with no
gap and no duplicate (also across a restart of the daemon), heartbeats, the end of a job's stream, GPU
snapshots and alerts (an event, a log line, the webhook's POST)."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from scheduler.gpus.fake import FakeProbe
from server.app import create_app
from server.settings import Settings
from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.daemon import Daemon, free_port, standin_daemon
from tests.integration.sse import Message, follow

pytestmark = pytest.mark.integration


def url(daemon: Daemon, path: str) -> str:
    return f"http://127.0.0.1:{daemon.port}{path}"


def logged_ids(data_dir: Path, job_id: int | None = None) -> list[int]:
    """Every event id the daemon's database holds (of one job): what a client must have seen, once each."""
    with sqlite3.connect(data_dir / "ftq.db") as db:
        if job_id is None:
            return [r[0] for r in db.execute("SELECT id FROM events ORDER BY id")]
        return [r[0] for r in db.execute("SELECT id FROM events WHERE job_id = ? ORDER BY id", (job_id,))]


def state_of(messages: list[Message], job_id: int) -> str | None:
    states = [m.data["state"] for m in messages if m.event == "state" and m.data["job_id"] == job_id]
    return states[-1] if states else None


def test_a_jobs_stream_tells_its_story_in_order_then_ends(tmp_path):
    with standin_daemon(tmp_path / "ftq", cpu_slots="1") as d:
        job_id = d.submit(tiny_spec(name="story", gpus=0, max_steps=5))["id"]
        got = follow(url(d, f"/jobs/{job_id}/events"), until=lambda m: False, timeout=60)

        assert got.ended
        kinds = [m.event for m in got.messages]
        states = [m.data["state"] for m in got.messages if m.event == "state"]
        assert states == ["queued", "starting", "running", "succeeded"], kinds
        assert kinds.index("start") < kinds.index("metric") < kinds.index("end") < len(kinds) - 1
        steps = [m.data["record"]["current_steps"] for m in got.messages if m.event == "metric"]
        assert steps == [1, 2, 3, 4, 5]
        assert all(m.data["job_id"] == job_id for m in got.messages)
        assert {m.data["attempt"] for m in got.messages if "record" in m.data} == {1}
        ids = [m.id for m in got.messages]
        assert ids == sorted(set(ids)) == logged_ids(d.data_dir, job_id)

        middle = ids[len(ids) // 2]
        rest = follow(url(d, f"/jobs/{job_id}/events"), until=lambda m: False, last_event_id=middle)
        assert [m.id for m in rest.messages] == [i for i in ids if i > middle]
        by_query = follow(url(d, f"/jobs/{job_id}/events?after={middle}"), until=lambda m: False)
        assert [m.id for m in by_query.messages] == [i for i in ids if i > middle]

        done = d.http.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(ids[-1])})
        assert done.status_code == 204  # the job has ended and all of it was sent: a browser stops reconnecting
        bad = d.http.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "header.last-event-id"
        assert d.http.get("/jobs/999/events").status_code == 404


def test_a_cursor_past_the_newest_event_starts_from_it_and_the_stream_still_ends(tmp_path):
    """An id this daemon never gave (another data dir's, or made up) must not make a stream wait for ids above it
    while the job's own events go by below: the stream starts from the newest event, and a job's ends with it."""
    with standin_daemon(tmp_path / "ftq", cpu_slots="1") as d:
        job_id = d.submit(tiny_spec(name="ahead", gpus=0, max_steps=5))["id"]
        got = follow(url(d, f"/jobs/{job_id}/events?after=996692"), until=lambda m: False, timeout=60)
        assert got.ended and state_of(got.messages, job_id) == "succeeded"
        ids = [m.id for m in got.messages]
        assert ids == [i for i in logged_ids(d.data_dir, job_id) if i >= ids[0]]

        later = threading.Timer(0.5, lambda: d.submit(tiny_spec(name="later", gpus=0, max_steps=2)))
        later.start()
        try:
            seen = follow(url(d, "/events?after=996692"), until=lambda m: state_of(m, job_id + 1) == "succeeded")
        finally:
            later.join()
        assert state_of(seen.messages, job_id + 1) == "succeeded"


def test_resuming_after_a_daemon_restart_misses_nothing_and_repeats_nothing(tmp_path):
    data = tmp_path / "ftq"
    d = Daemon(data, cpu_slots="1", worker_module="tests.integration.standin_worker", sse_ping_s="0.3")
    d.env.update(PYTHONPATH=str(REPO), STANDIN_STEP_S="0.1")
    d.start()
    try:
        job_id = d.submit(tiny_spec(name="restart", gpus=0, max_steps=60))["id"]
        first = follow(
            url(d, "/events"),
            until=lambda m: sum(x.event == "metric" for x in m) >= 10,
            last_event_id=0,
        )
        d.stop(signal.SIGKILL)  # the worker goes on, writing records, while no daemon reads them
        d.start()  # and the new daemon adopts it, reads what it wrote meanwhile, and streams it
        rest = follow(
            url(d, "/events"),
            until=lambda m: state_of(m, job_id) == "succeeded",
            last_event_id=first.messages[-1].id,
            timeout=120,
        )
    finally:
        d.close()

    seen = [m.id for m in first.messages + rest.messages]
    job_events = [m for m in first.messages + rest.messages if m.data.get("job_id") == job_id and m.event != "alert"]
    assert len(seen) == len(set(seen)), "an event was sent twice"
    assert seen == logged_ids(data)[: len(seen)], "an event was missed"
    steps = [m.data["record"]["current_steps"] for m in job_events if m.event == "metric"]
    assert steps == list(range(1, 61)), "each step once, in order, across the restart"
    assert any(": ping" in f": {c}" for c in first.comments + rest.comments), "heartbeats while quiet"


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/ftq-alerts", Hook.received
    finally:
        server.shutdown()


class InProcessDaemon:
    """The daemon's app under a real uvicorn in this process, so the test can change its fake GPUs' readings."""

    def __init__(self, data_dir: Path, probe: FakeProbe, **settings: Any) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        app = create_app(Settings(data_dir=data_dir, input_dirs=[REPO], **settings), probe=probe)
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessDaemon:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=60, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def shows(messages: list[Message], gpu: int, free: int) -> bool:
    """A GPU snapshot among the messages in which GPU `gpu` has `free` bytes free."""
    return any(m.event == "gpus" and m.data["gpus"][gpu]["memory_free"] == free for m in messages)


def test_gpu_memory_over_the_ratio_alerts_once_until_it_falls_back(tmp_path, webhook, caplog):
    hook_url, received = webhook
    probe = FakeProbe("2x10GiB")
    settings = dict(alert_vram_ratio=0.9, webhook_url=hook_url, gpu_event_interval_s=0.1, tick_s=0.2)
    with InProcessDaemon(tmp_path / "ftq", probe, **settings) as d:
        events = f"http://127.0.0.1:{d.port}/events"
        follow(events, until=lambda m: any(x.event == "gpus" for x in m), last_event_id=0)

        def alerts(messages: list[Message]) -> list[Message]:
            return [m for m in messages if m.event == "alert" and m.data["alert"] == "vram"]

        probe.set(1, memory_free=int(0.5 * 2**30))  # 95% used
        got = follow(events, until=lambda m: len(alerts(m)) == 1, last_event_id=0)
        first = alerts(got.messages)[0].data
        assert first["gpu"] == 1 and "95%" in first["message"] and "FTQ_ALERT_VRAM_RATIO=0.9" in first["message"]
        snapshot = [m for m in got.messages if m.event == "gpus"][-1].data["gpus"]
        assert snapshot[1]["memory_used"] == int(9.5 * 2**30), "the snapshot shows the new reading"

        probe.set(1, memory_free=int(0.8 * 2**30))  # 92%: still over, no second alert
        probe.set(0, memory_free=4 * 2**30)  # a change the snapshots show
        follow(events, until=lambda m: shows(m, 0, 4 * 2**30), last_event_id=0)
        probe.set(1, memory_free=5 * 2**30)  # 50%: re-armed
        follow(events, until=lambda m: shows(m, 1, 5 * 2**30), last_event_id=0)
        probe.set(1, memory_free=0)  # 100%: alerts again
        got = follow(events, until=lambda m: len(alerts(m)) == 2, last_event_id=0)
        assert len(alerts(got.messages)) == 2
        wait_for(lambda: len([r for r in received if r["alert"] == "vram"]) == 2, what="both alerts POSTed")
    assert [r["gpu"] for r in received if r["alert"] == "vram"] == [1, 1]
    assert sum("alert vram: GPU 1" in r.getMessage() for r in caplog.records) == 2


def test_an_end_alerts_and_an_oom_with_no_retry_left_says_so(tmp_path, webhook):
    hook_url, received = webhook
    d = Daemon(tmp_path / "ftq", cpu_slots="1", fault="oom@step:2@batch>1", webhook_url=hook_url)
    d.start()
    try:
        retried = d.submit(tiny_spec(name="retried", gpus=0, max_steps=4, per_device_train_batch_size=2))["id"]
        gave_up = d.submit(tiny_spec(name="gave-up", gpus=0, max_steps=4, per_device_train_batch_size=2, oom_retry=0))
        wait_for(lambda: d.ended(retried) and d.ended(gave_up["id"]), timeout=300, interval=0.5, what="both jobs")
        wait_for(lambda: len(received) >= 3, timeout=30, what="the alerts POSTed")
    finally:
        d.close()
    by_job: dict[int, list[str]] = {}
    for alert in received:
        by_job.setdefault(alert["job_id"], []).append(alert["alert"])
    assert by_job[retried] == ["job_ended"], "the OOM that was retried is not an end"
    assert sorted(by_job[gave_up["id"]]) == ["job_ended", "oom_retries_exhausted"]
    exhausted = next(a for a in received if a["alert"] == "oom_retries_exhausted")
    assert exhausted["state"] == "oom" and "requeue it with smaller settings" in exhausted["message"]
    assert "alert job_ended: job" in d.log()
