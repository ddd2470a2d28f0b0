"""The daemon's HTTP edge: what no client may exhaust (connections, open files, the log), around uvicorn.

uvicorn bounds a request's body and closes idle keep-alive connections, but it has no timeout for a connection
that never finishes its request headers, and its `limit_concurrency` counts idle connections too: with it, a
thousand half-open connections make every new request a 503, /healthz included. So `EdgeProtocol` (uvicorn's h11
protocol, which it uses when httptools is not installed; chosen here always, so the rules below hold everywhere)
adds three rules of its own:

- a connection that has not sent a request's complete headers within FTQ_HEADER_TIMEOUT_S (from its accept, or
  from its previous response) is closed;
- over FTQ_MAX_CONNECTIONS (or what the open-file limit allows), the connection that has waited longest for its
  request headers is closed, so a newcomer always gets in while idle ones hold the count;
- a connection that takes no byte for FTQ_SEND_TIMEOUT_S while a response waits for it (its write buffer, above
  its high-water mark, does not shrink) is aborted: uvicorn's own close would wait for that buffer to drain, which a
  client that never reads never lets happen, so its socket and buffer would be held for as long as it stays; it
  is reset (SO_LINGER 0), so the client learns it (and resumes) and the kernel keeps no FIN queued behind data;
  its kernel send buffer is fixed (SEND_BUFFER_BYTES) rather than left to grow.

Each is logged once per interval with a count (`Tally`), as are asyncio's "socket.accept() out of system resource"
errors, which it reports once per refused accept: thousands a second when the open files run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.settings import Settings

log = logging.getLogger("ftq.http")

ACCEPT_ERROR = "socket.accept() out of system resource"
TALLY_INTERVAL_S = 10.0
STARTUP_FAILURE = 3  # uvicorn's exit status when it could not start
# A connection's kernel send buffer, fixed: left to autotuning it grows to megabytes for a client that reads
# nothing (2.8 MB measured on loopback), which 500 such clients turn into more than a gigabyte of kernel memory.
# 128 KiB (the kernel doubles it) still carries tens of MB/s at LAN round trips.
SEND_BUFFER_BYTES = 128 * 1024
# What the daemon's own memory holds for a connection beyond the kernel's buffer before its writes wait (asyncio's
# default, 64 KiB, times 500 clients that read nothing was most of their cost).
WRITE_BUFFER_BYTES = 16 * 1024


class Tally:
    """A condition that may repeat thousands of times a second, logged at most once per `interval_s`: its first
    occurrence at once, then one line per interval with how many more there were, and nothing once it stops."""

    def __init__(self, logger: logging.Logger, interval_s: float = TALLY_INTERVAL_S) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._counts: dict[str, int] = {}

    def note(self, what: str) -> None:
        """On the event loop: one more occurrence of `what`."""
        if what in self._counts:
            self._counts[what] += 1
            return
        self.logger.warning("%s", what)
        self._counts[what] = 0
        asyncio.get_running_loop().call_later(self.interval_s, self._flush, what)

    def _flush(self, what: str) -> None:
        count = self._counts.pop(what, 0)
        if count:
            self.logger.warning("%s (%d more times in the last %g s)", what, count, self.interval_s)
            self._counts[what] = 0
            asyncio.get_running_loop().call_later(self.interval_s, self._flush, what)


def accept_error_handler(tally: Tally) -> Any:
    """An event loop exception handler that tallies accept errors and hands anything else to asyncio's own."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_ERROR:
            tally.note(
                f"{ACCEPT_ERROR} ({context.get('exception')}): new connections wait in the listen backlog; raise "
                "the open-file limit (ulimit -n) or lower FTQ_MAX_CONNECTIONS"
            )
        else:
            loop.default_exception_handler(context)

    return handle


@dataclass(frozen=True)
class EdgeLimits:
    max_connections: int
    header_timeout_s: float
    send_timeout_s: float


class EdgeProtocol(H11Protocol):
    """uvicorn's h11 protocol with the header timeout, the connection cap and the send timeout (module docstring).
    `edge_protocol` makes a subclass per server, holding its limits and its connections awaiting headers."""

    limits: ClassVar[EdgeLimits]
    tally: ClassVar[Tally]
    waiting: ClassVar[dict[EdgeProtocol, None]]  # awaiting a request's headers, the longest-waiting first
    dropped: ClassVar[set[EdgeProtocol]]  # aborted, their connection_lost still to come

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._cycle_seen: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # the kernel's share of what a client that stops reading holds (it doubles it)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self._await_headers()
        over = len(self.connections) - len(self.dropped) - self.limits.max_connections
        while over > 0 and self.waiting:
            next(iter(self.waiting))._drop(
                f"over FTQ_MAX_CONNECTIONS ({self.limits.max_connections} connections): closed the connection "
                "that had waited longest for its request"
            )
            over -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self.dropped.discard(self)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._cycle_seen:  # a request's headers came in
            self._cycle_seen = self.cycle
            self._cancel_header_timer()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._forget()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this connection has its own header time
        super().on_response_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._watch_stall()

    def _watch_stall(self) -> None:
        """While writes wait (nothing is added to the buffer meanwhile), look again after the send timeout: a
        buffer that shrank is a client taking data, however slowly (a large response); one that did not is a
        client taking none."""
        size = self.transport.get_write_buffer_size()
        self._stall_timer = self.loop.call_later(self.limits.send_timeout_s, self._stalled, size)

    def _stalled(self, size: int) -> None:
        if self.transport.get_write_buffer_size() < size:
            self._watch_stall()
            return
        self._drop(
            f"closed connections that took no data for FTQ_SEND_TIMEOUT_S ({self.limits.send_timeout_s:g} s) "
            "while a response waited for them (event streams resume with Last-Event-ID)",
            reset=True,
        )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    # ---- its own ----

    def _await_headers(self) -> None:
        self._cancel_header_timer()
        self.waiting[self] = None  # the newest last
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_s,
            self._drop,
            f"closed connections that sent no complete request headers within FTQ_HEADER_TIMEOUT_S "
            f"({self.limits.header_timeout_s:g} s)",
        )

    def _cancel_header_timer(self) -> None:
        self.waiting.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _forget(self) -> None:
        self._cancel_header_timer()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _drop(self, why: str, reset: bool = False) -> None:
        self._forget()
        if self not in self.dropped:
            self.dropped.add(self)
            self.tally.note(why)
            sock = self.transport.get_extra_info("socket") if reset else None
            if sock is not None:  # a reset, not a FIN queued behind data the client never takes: it learns it
                with contextlib.suppress(OSError):  # was closed (and resumes), and the kernel keeps nothing of it
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """A protocol class for one server: its limits, and its own record of the connections awaiting headers."""
    attrs = {"limits": limits, "tally": Tally(log), "waiting": {}, "dropped": set()}
    return type("EdgeProtocol", (EdgeProtocol,), attrs)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's open-file soft limit to its hard limit; (what it was, what it is now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft, soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(max_connections: int, open_files: int) -> int:
    """How many connections the daemon holds: FTQ_MAX_CONNECTIONS, less where the open files would not leave
    enough for the database, the workers' files and the log (an eighth of them, at least 128)."""
    reserve = max(128, open_files // 8)
    return max(16, min(max_connections, open_files - reserve))


class EdgeServer(uvicorn.Server):
    """uvicorn's server with the accept errors tallied (the loop's exception handler is set once it runs)."""

    tally: Tally

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(accept_error_handler(self.tally))
        await super().startup(sockets=sockets)


def run(app: Any, host: str, port: int, settings: Settings) -> None:
    """Serve `app` with the edge's limits (uvicorn.run's one-process path, with EdgeServer and EdgeProtocol)."""
    was, now = raise_open_file_limit()
    cap = connection_cap(settings.max_connections, now)
    log.info(
        "open files: %d (raised from %d); at most %d connections (FTQ_MAX_CONNECTIONS=%d), headers within %g s, "
        "a client taking no data closed after %g s",
        now,
        was,
        cap,
        settings.max_connections,
        settings.header_timeout_s,
        settings.send_timeout_s,
    )
    limits = EdgeLimits(cap, settings.header_timeout_s, settings.send_timeout_s)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", http=edge_protocol(limits))
    server = EdgeServer(config)
    server.tally = Tally(log)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
