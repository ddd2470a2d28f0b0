"""The event hub's catch-up: a stream whose cursor is older than what the hub holds reads the database in pages
and gets every event up to the hub's floor, once each and in order (a page's size must not decide where the next
read starts: a cursor moved on to the floor after a full page would skip what lies between)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlmodel import Session

from server.db.engine import make_engine, upgrade_database
from server.db.event_log import add_events
from server.live.event_hub import CATCH_UP_PAGE, EventHub
from server.settings import Settings


def logged(tmp_path: Path, count: int, jobs: int = 1) -> EventHub:
    engine = make_engine(Settings(data_dir=tmp_path))
    upgrade_database(engine)
    with Session(engine) as session:
        add_events(session, [(1 + i % jobs, "metric", {"i": i}) for i in range(count)])
        session.commit()
    return EventHub(engine)  # its floor is the newest event: every event is older than what it holds


async def read_up_to_floor(hub: EventHub, job_id: int | None, limit: int) -> list[int]:
    """What a stream from cursor 0 is handed until it has nothing more to take (it would wait for new events)."""
    hub.start()
    ids, cursor = [], 0
    try:
        while True:
            try:
                found, cursor = await asyncio.wait_for(hub.after(cursor, job_id, limit), timeout=2)
            except asyncio.TimeoutError:
                return ids
            ids += [e.id for e in found]
    finally:
        hub.stop()


@pytest.mark.parametrize("limit", [1000, CATCH_UP_PAGE, 7])
def test_a_stream_far_behind_gets_every_event_up_to_the_floor_once(tmp_path: Path, limit: int) -> None:
    count = 5 * CATCH_UP_PAGE + 3
    hub = logged(tmp_path, count)
    assert asyncio.run(read_up_to_floor(hub, None, limit)) == list(range(1, count + 1))


def test_one_jobs_stream_far_behind_gets_all_of_its_events(tmp_path: Path) -> None:
    count = 6 * CATCH_UP_PAGE
    hub = logged(tmp_path, count, jobs=3)
    assert asyncio.run(read_up_to_floor(hub, 2, 1000)) == list(range(2, count + 1, 3))
