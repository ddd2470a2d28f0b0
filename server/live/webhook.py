"""FTQ_WEBHOOK_URL: each alert POSTed as JSON from a thread of its own, so a slow or dead receiver never slows
the scheduler or the API.

Bounded everywhere: a queue of at most QUEUE alerts (beyond it the oldest waiting ones are dropped, and the log
says so), TRIES tries each with a growing pause, a TIMEOUT_S per try. httpx does the HTTP.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import httpx

log = logging.getLogger("ftq.alerts")

QUEUE = 1000
TRIES = 4
TIMEOUT_S = 5.0
BACKOFF_S = (0.5, 2.0, 5.0)  # before the 2nd, 3rd and 4th try


class Webhook:
    def __init__(self, url: str, backoff_s: tuple[float, ...] = BACKOFF_S) -> None:
        self.url = url
        self.backoff_s = backoff_s
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=QUEUE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftq-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: dict[str, Any]) -> None:
        """Queue an alert; never blocks."""
        while True:
            try:
                self._queue.put_nowait(alert)
                return
            except queue.Full:
                try:
                    dropped = self._queue.get_nowait()
                    log.warning("webhook: %d alerts waiting, dropped the oldest: %s", QUEUE, dropped)
                except queue.Empty:
                    pass

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def _run(self) -> None:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
            while not self._stop.is_set():
                alert = self._queue.get()
                if alert is None:
                    return
                self._post(client, alert)

    def _post(self, client: httpx.Client, alert: dict[str, Any]) -> None:
        for attempt in range(TRIES):
            if attempt:
                if self._stop.wait(self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)]):
                    return
            try:
                response = client.post(self.url, json=alert)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break  # the receiver refuses this alert: trying again would not change its mind
            log.warning("webhook %s: try %d of %d failed (%s)", self.url, attempt + 1, TRIES, problem)
        log.error("webhook %s: gave up on alert %s", self.url, alert.get("message"))
