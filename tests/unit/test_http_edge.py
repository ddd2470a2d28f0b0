"""The edge on real sockets, with an in-process uvicorn: a connection that never finishes its headers is closed,
over the cap the longest-waiting idle one goes, a slow reader of a large response is served to its end; a real
flood of accept errors (a real open-file limit) is logged once, then once per interval with its count; the
connection cap leaves files for the rest; an event stream's writes are bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from server.api.routes.events import WRITE_BYTES, writes
from server.db.event_log import LoggedEvent
from server.http_edge import (
    ACCEPT_ERROR,
    EdgeLimits,
    EdgeServer,
    Tally,
    accept_error_handler,
    connection_cap,
    edge_protocol,
    log,
)

NOFILE = resource.RLIMIT_NOFILE
BIG = 2 << 20


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b"x" * (BIG if scope["path"] == "/big" else 2)
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def edge(max_connections: int = 100, header_timeout_s: float = 0.3, send_timeout_s: float = 0.3) -> Iterator[int]:
    """A uvicorn server with the edge's protocol on a free port, in a thread; yields the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = EdgeLimits(max_connections, header_timeout_s, send_timeout_s)
    config = uvicorn.Config(app, port=port, http=edge_protocol(limits), lifespan="off", log_level="warning")
    server = EdgeServer(config)
    server.tally = Tally(log)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def request(port: int, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return read_to_end(s)


def read_to_end(s: socket.socket, pause: float = 0.0, size: int = 1 << 16) -> bytes:
    got = b""
    while chunk := s.recv(size):
        got += chunk
        time.sleep(pause)
    return got


def partial(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return s


def test_a_connection_that_never_finishes_its_headers_is_closed_and_others_are_served() -> None:
    with edge(header_timeout_s=0.3) as port:
        slow = partial(port)
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)  # a keep-alive client, then silence
        kept.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nxx"):
            answer += kept.recv(4096)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: 1")  # its next request's headers never end
        assert request(port).startswith(b"HTTP/1.1 200")
        assert read_to_end(slow) == b"" and read_to_end(kept) == b""  # both closed by the daemon


def test_over_the_cap_the_longest_waiting_idle_connection_is_closed() -> None:
    with edge(max_connections=4, header_timeout_s=60) as port:
        idle = [partial(port) for _ in range(4)]
        time.sleep(0.2)
        assert request(port).startswith(b"HTTP/1.1 200")  # a newcomer gets in
        assert read_to_end(idle[0]) == b""  # the oldest idle one made room
        idle[1].settimeout(0.3)
        with pytest.raises(TimeoutError):
            idle[1].recv(1)  # the others stay
        for s in idle:
            s.close()


def test_a_slow_reader_of_a_large_response_is_served_to_its_end() -> None:
    with edge(send_timeout_s=1.0) as port, socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        got = read_to_end(s, pause=0.04, size=32768)  # ~800 KiB/s: seconds longer than the send timeout
        assert len(got.partition(b"\r\n\r\n")[2]) == BIG


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
