"""The edge's pure parts and its log: a real flood of accept errors (a real listening socket, a real open-file
limit) is logged once, then once per interval with its count; the connection cap leaves files for the rest;
an event stream's writes are bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket

import pytest

from server.api.routes.events import WRITE_BYTES, writes
from server.db.event_log import LoggedEvent
from server.http_edge import ACCEPT_ERROR, Tally, accept_error_handler, connection_cap

NOFILE = resource.RLIMIT_NOFILE


def test_a_flood_of_accept_errors_is_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def flood() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(accept_error_handler(Tally(logging.getLogger("ftq.http"), interval_s=0.3)))
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog=50)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # in the listen backlog
        lowest_free = os.dup(0)
        os.close(lowest_free)
        soft, hard = resource.getrlimit(NOFILE)
        resource.setrlimit(NOFILE, (lowest_free, hard))  # no new file: every accept fails with EMFILE
        try:
            await asyncio.sleep(0.2)
        finally:
            resource.setrlimit(NOFILE, (soft, hard))
        await asyncio.sleep(0.3)  # the interval ends: its count is logged
        for client in clients:
            client.close()
        server.close()

    with caplog.at_level(logging.WARNING, logger="ftq.http"):
        asyncio.run(flood())
    lines = [r.getMessage() for r in caplog.records if ACCEPT_ERROR in r.getMessage()]
    assert len(lines) == 2, lines
    assert "Too many open files" in lines[0] and "FTQ_MAX_CONNECTIONS" in lines[0]
    assert "more times in the last 0.3 s" in lines[1]


def test_other_loop_errors_still_reach_asyncios_handler(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(accept_error_handler(Tally(logging.getLogger("ftq.http"))))
        loop.call_exception_handler({"message": "something else broke"})

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(fail())
    assert any("something else broke" in r.getMessage() for r in caplog.records)


def test_the_connection_cap_leaves_open_files_for_the_database_and_workers() -> None:
    assert connection_cap(4096, 1_048_576) == 4096
    assert connection_cap(4096, 1024) == 896
    assert connection_cap(4096, 256) == 128
    assert connection_cap(100, 20_000) == 100


def test_a_streams_writes_are_bounded_and_lose_nothing() -> None:
    events = [LoggedEvent(i, 1, "metric", {"loss": 1.0, "pad": "x" * (i % 500)}) for i in range(1, 2001)]
    events.append(LoggedEvent(2001, 1, "metric", {"big": "y" * (3 * WRITE_BYTES)}))
    chunks = list(writes(events))
    assert b"".join(chunks) == b"".join(e.wire for e in events)
    assert all(len(c) <= WRITE_BYTES for c in chunks[:-1]) and chunks[-1] == events[-1].wire
