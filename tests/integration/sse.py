"""A test client for the event streams: parse Server-Sent Events and follow a stream until a condition holds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Message:
    id: int | None
    event: str
    data: dict[str, Any]


@dataclass
class Followed:
    messages: list[Message] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False  # the server closed the stream (a job's stream after its end)
    statuses: list[int] = field(default_factory=list)


def parse(lines: Iterable[str], comments: list[str] | None = None) -> Iterator[Message]:
    """The messages of an SSE stream, as the HTML standard reads it (fields up to a blank line)."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                ids = fields.get("id")
                yield Message(
                    int(ids[-1]) if ids else None,
                    fields.get("event", ["message"])[-1],
                    json.loads("\n".join(fields["data"])),
                )
            fields = {}
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)


def follow(
    url: str,
    until: Callable[[list[Message]], bool],
    timeout: float = 60,
    headers: dict[str, str] | None = None,
    last_event_id: int | None = None,
) -> Followed:
    """Read the stream at `url` until `until(messages)` holds, the server ends it, or `timeout`; on a dropped
    connection reconnect with the last id seen, as a browser does."""
    got = Followed()
    deadline = time.monotonic() + timeout
    last = last_event_id
    while time.monotonic() < deadline:
        asked = {**(headers or {}), **({"Last-Event-ID": str(last)} if last is not None else {})}
        try:
            with httpx.stream("GET", url, headers=asked, timeout=httpx.Timeout(10, read=1.0)) as response:
                got.statuses.append(response.status_code)
                if response.status_code != 200:
                    got.ended = True
                    return got
                for message in parse(response.iter_lines(), got.comments):
                    got.messages.append(message)
                    last = message.id if message.id is not None else last
                    if until(got.messages):
                        return got
                got.ended = True
                return got
        except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError):
            time.sleep(0.05)  # the daemon is restarting, or the stream was quiet for a second: look again
    raise AssertionError(f"{url}: the condition did not hold within {timeout:.0f} s; got {got.messages[-5:]}")
