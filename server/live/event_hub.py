"""One reader of the event log for the whole daemon, however many clients stream it.

A thread reads the events committed since its last look (every `poll_s`, 25 ms, one indexed query) and keeps the
newest few thousand in memory; each stream waits on the hub and takes what is newer than its cursor from
there, so a hundred clients cost the database one query per poll, not a hundred. An answer holds at most a
page of events (references to the hub's own), whatever a stream's backlog. A stream whose cursor is
older than what the hub keeps (a client resuming after a long gap) reads the rest from the database first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from bisect import bisect_right
from collections.abc import Callable
from itertools import islice
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.db.event_log import LoggedEvent, events_after, newest_id

log = logging.getLogger("ftq.events")
T = TypeVar("T")

PAGE = 1000  # events a read takes at most
# A stream behind what the hub holds reads the database in pages this small, at most READERS streams at once, in
# threads of their own: a few hundred clients far behind hold little memory each and never take the API's threads
# (the default thread pool, FTQ_API_THREADS) from the requests.
CATCH_UP_PAGE = 200
READERS = 4


class EventHub:
    def __init__(self, engine: Engine, poll_s: float = 0.025, keep: int = 20_000) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self.keep = keep
        self._ids: list[int] = []  # ascending, parallel to _events
        self._events: list[LoggedEvent] = []
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._poked = threading.Event()
        self._thread: threading.Thread | None = None
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop, at the first read
        with Session(engine) as session:
            self.newest = newest_id(session)  # what a stream that asks for "live only" starts after
        self._floor = self.newest  # the hub holds every event with an id above this

    # ---- the reader thread ----

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._poll, name="ftq-event-hub", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Something was committed: look now rather than at the next poll (any thread may call it)."""
        self._poked.set()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        last = self.newest
        while not self._stop.is_set():
            try:
                with Session(self.engine) as session:
                    found = events_after(session, last, limit=PAGE)
            except Exception as exc:  # a locked or busy database: the next look takes what this one missed
                log.warning("event log unreadable for now: %s", exc)
                found = []
            if found:
                last = found[-1].id
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._publish, found)
            if len(found) < PAGE:
                self._poked.wait(self.poll_s)
                self._poked.clear()

    def _publish(self, found: list[LoggedEvent]) -> None:
        """On the event loop: keep the new events and wake every stream."""
        self._ids.extend(e.id for e in found)
        self._events.extend(found)
        self.newest = found[-1].id
        if len(self._ids) > 2 * self.keep:  # trimmed in one slice now and then, not one pop per event
            cut = len(self._ids) - self.keep
            self._floor = self._ids[cut - 1]
            del self._ids[:cut], self._events[:cut]
        assert self._wake is not None
        self._wake.set()
        self._wake = asyncio.Event()

    # ---- what the streams ask ----

    async def after(self, cursor: int, job_id: int | None = None, limit: int = PAGE) -> tuple[list[LoggedEvent], int]:
        """The events after `cursor` (one job's, or all; at most `limit`), waiting until there is at least one;
        and the id up to which the answer looked, the stream's next cursor (past events of other jobs, too)."""
        while True:
            if cursor < self._floor:  # older than the hub holds: from the database, up to what it holds
                floor = self._floor
                page = min(limit, CATCH_UP_PAGE)
                found = await self.read(self._read, cursor, job_id, page)
                full = len(found) == page  # there may be more before the floor: the next read starts after these
                found = [e for e in found if e.id <= floor]
                if found:
                    return found, found[-1].id if full and found[-1].id < floor else max(found[-1].id, floor)
                cursor = floor
                continue
            start = bisect_right(self._ids, cursor)
            events = self._events
            if job_id is None:
                picked = events[start : start + limit]
            else:
                picked = list(
                    islice((events[i] for i in range(start, len(events)) if events[i].job_id == job_id), limit)
                )
            if picked:  # a full answer stops at its last event; a shorter one looked as far as the newest
                return picked, picked[-1].id if len(picked) == limit else self.newest
            if self.newest > cursor:
                cursor = self.newest  # only other jobs' events: nothing to send, look on from there
            assert self._wake is not None
            await self._wake.wait()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a stream's database read in the streams' own few threads (see CATCH_UP_PAGE)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(READERS)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _read(self, cursor: int, job_id: int | None, limit: int) -> list[LoggedEvent]:
        with Session(self.engine) as session:
            return events_after(session, cursor, job_id, limit=limit)
