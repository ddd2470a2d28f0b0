"""`ftq watch`: the jobs live until they have all ended, redrawn in place in a terminal, a line per change
otherwise.

The event stream (GET /events) says when something changed; the jobs are then re-read (at
most every `min_gap_s`, and every `interval_s` anyway), so the view is always what GET /jobs
says. A daemon that goes away is waited for: "daemon unreachable, reconnecting…", retries
with backoff, and the stream resumes from the last event it saw (Last-Event-ID).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import IO, Any

import httpx
from rich.console import Console
from rich.live import Live

from server.cli.client import TERMINAL, Client
from server.cli.sse import Down, SseEvent, Up, backoff_s, follow
from server.cli.tables import job_pages
from server.cli.watch_view import WatchRow, change_line, watch_row, watch_table

ACTIVE = ("queued", "starting", "running", "cancelling")
JOB_EVENTS = {"state", "start", "metric", "eval", "checkpoint", "end"}
UNREACHABLE = "daemon unreachable, reconnecting…"


class ChangeFeed:
    """Follows GET /events in a thread and sets `changed` when a job event (or a reconnect) comes.

    Without the stream (an older daemon answers 404, or the token is refused) `available` turns
    False and the watch re-reads on its timer alone.
    """

    def __init__(self, client: Client, ids: set[int] | None) -> None:
        self.client, self.ids = client, ids
        self._response: httpx.Response | None = None
        self.changed = threading.Event()
        self.available = True
        self.last_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftq-watch-events", daemon=True)

    def start(self) -> ChangeFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the reader now, not at the next heartbeat: a shutdown of its socket breaks off the read it
        waits in (closing the socket from another thread would not)."""
        self._stop.set()
        stream = self._response.extensions.get("network_stream") if self._response is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=2)

    def _connected(self, response: httpx.Response) -> None:
        self._response = response

    def _run(self) -> None:
        try:
            for item in follow(self.client, "/events", stop=self._stop, connected=self._connected):
                if isinstance(item, SseEvent):
                    self.last_id = item.id if item.id is not None else self.last_id
                    job_id = item.data.get("job_id") if isinstance(item.data, dict) else None
                    if item.event in JOB_EVENTS and (self.ids is None or job_id in self.ids):
                        self.changed.set()
                elif isinstance(item, (Up, Down)):
                    self.changed.set()
        except Exception:  # a refused stream (404 from an older daemon, 401), or the close of stop()
            if not self._stop.is_set():
                self.available = False
                self.changed.set()


def _utc(stamp: Any) -> datetime | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def _age_s(now: datetime, stamp: Any) -> float | None:
    when = _utc(stamp)
    return max((now - when).total_seconds(), 0.0) if when is not None else None


def rows_of(jobs: list[dict[str, Any]], now: datetime) -> list[WatchRow]:
    """Each job's WatchRow as of `now` (the ETA counts down between reads)."""
    rows = []
    for job in jobs:
        record = job.get("latest_metrics")
        record = record if isinstance(record, dict) and record.get("kind") in (None, "metric") else None
        attempts = job.get("attempts") or []
        started = attempts[-1].get("started_at") if attempts else job.get("started_at")
        rows.append(watch_row(job, record, _age_s(now, (record or {}).get("timestamp")) or 0.0, _age_s(now, started)))
    return rows


def join_active(client: Client, watched: list[int]) -> None:
    """Add to `watched` every job now queued, starting, running or cancelling, however many: a page at a time
    (one page of 1,000 a state left the rest out)."""
    for state in ACTIVE:
        listed, _ = job_pages(lambda params: client.send_json("GET", "/jobs", params=params), state, 0, None)
        known = set(watched)
        watched.extend(sorted(job["id"] for job in listed if job["id"] not in known))


def read_jobs(client: Client, watched: list[int], follow_new: bool) -> list[dict[str, Any]]:
    """The watched jobs, whole (GET /jobs/{id}); with `follow_new`, any job that became active joins them."""
    if follow_new:
        join_active(client, watched)
    return [client.send_json("GET", f"/jobs/{job_id}") for job_id in watched]


def watch(
    client: Client,
    ids: list[int] | None,
    out: IO[str] = sys.stdout,
    interval_s: float = 5.0,
    min_gap_s: float = 0.25,
) -> list[dict[str, Any]]:
    """Show the jobs until every one of them has ended; return them (as GET /jobs/{id} gives them).

    Without ids: the jobs queued or running when it starts, and those submitted while it runs.
    """
    tty = out.isatty()
    watched: list[int] = list(dict.fromkeys(ids or []))
    feed = ChangeFeed(client, set(watched) if ids else None).start()
    console = Console(file=out) if tty else None
    live = Live(console=console, auto_refresh=False, transient=False) if console is not None else nullcontext()
    jobs: list[dict[str, Any]] = []
    last_keys: dict[int, tuple[Any, ...]] = {}
    failures, status, last_read = 0, None, 0.0
    title = f"ftq watch  {client.url}"
    try:
        with live:
            read = True
            while True:
                if read:
                    try:
                        last_read = time.monotonic()
                        jobs = read_jobs(client, watched, follow_new=not ids)
                        if failures and not tty:
                            out.write(f"{time.strftime('%H:%M:%S')}  daemon reachable again\n")
                        failures, status = 0, None
                    except httpx.TransportError:
                        failures += 1
                        if failures == 1 and not tty:
                            out.write(f"{time.strftime('%H:%M:%S')}  {UNREACHABLE}\n")
                        status = UNREACHABLE
                if not ids and not watched and status is None:
                    out.write("nothing to watch: no job is queued or running (`ftq list` shows them all)\n")
                    return []
                rows = rows_of(jobs, datetime.now(timezone.utc))
                if tty:
                    live.update(watch_table(rows, title, status), refresh=True)  # type: ignore[union-attr]
                elif read:
                    _print_changes(out, rows, last_keys)
                out.flush()
                if status is None and jobs and all(job["state"] in TERMINAL for job in jobs):
                    return jobs
                if status is not None:
                    time.sleep(backoff_s(failures))
                    read = True
                    continue
                read = _wait_for_change(feed, last_read, interval_s, min_gap_s, redraw_s=1.0 if tty else None)
    finally:
        feed.stop()


def _print_changes(out: IO[str], rows: list[WatchRow], last_keys: dict[int, tuple[Any, ...]]) -> None:
    clock = time.strftime("%H:%M:%S")
    for row in rows:
        if last_keys.get(row.id) != row.key():
            last_keys[row.id] = row.key()
            out.write(change_line(row, clock) + "\n")


def _wait_for_change(
    feed: ChangeFeed, last_read: float, interval_s: float, min_gap_s: float, redraw_s: float | None
) -> bool:
    """Wait until an event says something changed (then no sooner than min_gap_s after the last read), or
    interval_s has passed since the last read (1 s without the event stream): True, read again. Or, in a
    terminal, until redraw_s has passed: False, only redraw (the ETAs count down)."""
    every = interval_s if feed.available else min(interval_s, 1.0)
    due = every - (time.monotonic() - last_read)
    timeout = max(min(due, redraw_s) if redraw_s else due, 0.0)
    changed = feed.changed.wait(timeout)
    if not changed and time.monotonic() - last_read < every:
        return False
    feed.changed.clear()
    gap = min_gap_s - (time.monotonic() - last_read)
    if gap > 0:
        time.sleep(gap)
    return True
