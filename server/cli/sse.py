"""Reading the daemon's event streams (GET /events, GET /jobs/{id}/events): SSE lines parsed, reconnects resumed.

The parser is the SSE format's own rules over one line at a time (`id:`, `event:`, `data:`, a
`:` comment, a blank line that ends a message); `follow` reconnects with backoff and
Last-Event-ID, so a daemon restart loses no event (the ids are persisted).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from server.cli.client import TERMINAL, Client
from server.cli.printable import printable

CLOSED = "the daemon closed the stream"


@dataclass(frozen=True)
class SseEvent:
    id: int | None
    event: str
    data: Any  # the JSON object, or the text where it is not JSON


@dataclass(frozen=True)
class Down:
    """The stream broke (the daemon stopped, or the network): the follower retries after `retry_in` s."""

    error: str
    retry_in: float


@dataclass(frozen=True)
class Up:
    """The stream is connected (again)."""

    after: int | None


@dataclass
class SseParser:
    """Feed it the stream's lines; it returns each message when its blank line comes."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    last_id: int | None = None

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):  # a comment: the heartbeat
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # `retry` and unknown fields are ignored, as the format says

    def _dispatch(self) -> SseEvent | None:
        if self._id is not None and self._id.isdigit():
            self.last_id = int(self._id)
        data, event, self._data, self._event, self._id = self._data, self._event, [], "", None
        if not data:
            return None
        text = "\n".join(data)
        try:
            payload: Any = printable(json.loads(text))
        except ValueError:
            payload = printable(text)
        return SseEvent(self.last_id, printable(event or "message"), payload)


def backoff_s(failures: int, first: float = 0.25, most: float = 5.0) -> float:
    """The wait before reconnect number `failures` (1, 2, ...): doubling from `first`, at most `most`."""
    return min(first * 2 ** max(failures - 1, 0), most)


def follow(
    client: Client,
    path: str,
    after: int | None = None,
    ends: Callable[[SseEvent], bool] = lambda _: False,
    stop: threading.Event | None = None,
    read_timeout: float = 45.0,
    connected: Callable[[httpx.Response], None] = lambda _: None,
) -> Iterator[SseEvent | Down | Up]:
    """The stream's events until the daemon says it has no more (204: a job's stream after its end) or
    `ends(event)`; Down / Up when the connection breaks and returns.

    A stream the daemon closes right after a job's terminal state is asked again at once: it
    answers 204 when the job has really ended, or goes on (an OOM retry queued the job again).
    A 4xx / 5xx answer (no such job, a wrong token) is a CliError and ends it. The read timeout
    is a few heartbeats: a connection that went silent counts as broken. `connected` is given
    each new response (so that another thread can break its read off).
    """
    stop = stop or threading.Event()
    failures = 0
    while not stop.is_set():
        parser = SseParser(last_id=after)
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        ended_job = False
        try:
            with client.stream(path, headers, read_timeout) as response:
                if response.status_code == 204:
                    return
                connected(response)
                failures = 0
                yield Up(after)
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is None:
                        if stop.is_set():
                            return
                        continue
                    after = parser.last_id
                    ended_job = ends_job_stream(event)
                    yield event
                    if ends(event) or stop.is_set():
                        return
            if ended_job:
                continue
            error = CLOSED
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        failures += 1
        wait = backoff_s(failures)
        yield Down(error, wait)
        stop.wait(wait)


def ends_job_stream(event: SseEvent) -> bool:
    """A job's stream ends after its terminal `state` event."""
    return event.event == "state" and isinstance(event.data, dict) and event.data.get("state") in TERMINAL
