"""`ftq logs -f` and `ftq events`: a job's worker log and the event stream, followed until the job ends."""

from __future__ import annotations

import codecs
import json
import sys
import time
from typing import IO

import httpx

from server.cli.client import TERMINAL, Client
from server.cli.printable import printable_text
from server.cli.sse import CLOSED, Down, SseEvent, Up, follow
from server.cli.words import event_line

UNREACHABLE = "ftq: daemon unreachable, reconnecting…"


def follow_logs(client: Client, job_id: int, out: IO[str] = sys.stdout, poll_s: float = 0.5) -> str:
    """Print the job's worker log as it grows (a new attempt's log after a line saying so) until the job has
    ended and its log is read to the end; return the job's final state. Survives a daemon restart."""
    offset, attempt, down = 0, None, False
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        try:
            state = client.send_json("GET", f"/jobs/{job_id}")["state"]
            response = client.send("GET", f"/jobs/{job_id}/logs", params={"offset": offset})
            if down:
                print("ftq: daemon reachable again", file=sys.stderr)
                down = False
        except httpx.TransportError:
            if not down:
                print(UNREACHABLE, file=sys.stderr)
                down = True
            time.sleep(poll_s * 2)
            continue
        number = response.headers.get("x-log-attempt")
        if attempt is not None and number is not None and number != attempt:
            out.write(decoder.decode(b"", final=True) + f"--- attempt {number} ---\n")
            attempt = number
            if offset:  # these bytes are the new log's after the old log's offset: read it from its start
                offset = 0
                continue
        attempt = attempt or number
        out.write(printable_text(decoder.decode(response.content)))
        out.flush()
        offset = int(response.headers.get("x-log-offset", offset + len(response.content)))
        if response.content:
            continue  # more may be there already: read on before sleeping
        if state in TERMINAL:
            out.write(decoder.decode(b"", final=True))
            out.flush()
            return state
        time.sleep(poll_s)


def print_events(
    client: Client, job_id: int | None, as_json: bool, after: int | None, out: IO[str] = sys.stdout
) -> None:
    """Print the event stream, a line per event, reconnecting with Last-Event-ID. A job's stream starts with its
    history and ends once the job has ended; the daemon's stream (no job) runs until interrupted."""
    path = f"/jobs/{job_id}/events" if job_id is not None else "/events"
    said_down = False
    for item in follow(client, path, after=after):
        if isinstance(item, Down):
            # A stream the daemon closed in good order is asked again quietly; a broken connection is said, once.
            if item.error != CLOSED and not said_down:
                print(UNREACHABLE, file=sys.stderr)
                said_down = True
            continue
        if isinstance(item, Up):
            if said_down:
                print("ftq: daemon reachable again", file=sys.stderr)
            said_down = False
            continue
        assert isinstance(item, SseEvent)
        if as_json:
            out.write(json.dumps({"id": item.id, "event": item.event, "data": item.data}) + "\n")
        else:
            out.write(event_line(item) + "\n")
        out.flush()
