"""FTQ_WEBHOOK_URL's sender against a real HTTP receiver: retries what may pass later, gives up when bounded,
and never makes the caller wait."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from server.live.webhook import TRIES, Webhook
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


class Receiver(BaseHTTPRequestHandler):
    answers: list[int] = []  # the status of each answer in turn; 204 once they run out
    got: list[dict[str, Any]] = []
    hold_s = 0.0

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        Receiver.got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        time.sleep(Receiver.hold_s)
        self.send_response(Receiver.answers.pop(0) if Receiver.answers else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.answers, Receiver.got, Receiver.hold_s = [], [], 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()


def test_a_failing_receiver_is_tried_again_until_it_takes_the_alert(receiver):
    Receiver.answers = [500, 503]
    hook = Webhook(receiver, backoff_s=(0.01,))
    try:
        hook.send({"alert": "job_ended", "message": "job 1 ended succeeded"})
        wait_for(lambda: len(Receiver.got) == 3, timeout=10, what="three tries")
    finally:
        hook.close()
    assert [g["message"] for g in Receiver.got] == ["job 1 ended succeeded"] * 3


def test_tries_are_bounded_and_a_refusal_is_not_repeated(receiver, caplog):
    Receiver.answers = [500] * 10 + [400]
    hook = Webhook(receiver, backoff_s=(0.01,))
    try:
        hook.send({"alert": "vram", "message": "first"})
        wait_for(lambda: len(Receiver.got) == TRIES, timeout=10, what="every try")
        Receiver.answers = [400]
        hook.send({"alert": "vram", "message": "second"})
        wait_for(lambda: len(Receiver.got) == TRIES + 1, timeout=10, what="the refused one")
        time.sleep(0.2)
    finally:
        hook.close()
    assert len(Receiver.got) == TRIES + 1  # the 400 was not tried again
    assert sum("gave up on alert" in r.getMessage() for r in caplog.records) == 2


def test_sending_never_waits_for_the_receiver(receiver):
    Receiver.hold_s = 1.0
    hook = Webhook(receiver, backoff_s=(0.01,))
    try:
        began = time.monotonic()
        for n in range(50):
            hook.send({"alert": "job_ended", "message": str(n)})
        assert time.monotonic() - began < 0.5
    finally:
        hook.close(timeout=0.1)
