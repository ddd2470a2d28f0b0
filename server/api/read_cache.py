"""The answers of the polled reads, kept while the database has not changed since they were read.

Clients poll GET /jobs/{id} and GET /jobs many times a second, and most polls find
nothing changed. An answer (its JSON) is kept with the database's version as it was just
before the answer was read: SQLite's `PRAGMA data_version`, asked on a connection of its
own that never writes, which changes whenever any other connection, of this process or
another, commits. A request that finds an answer of the current version gets it without
a query and without a thread; one that does not reads afresh, and the requests for the
same answer that come meanwhile, at the same version, wait for that read instead of each
doing it.

So an answer served from here reflects every commit that ended before its request came,
as a fresh read would: a commit that the kept read may have missed changed the version.
An answer made with the GPUs' snapshot (a queued job's wait reason) is served no longer
than that snapshot may be relied on (at most a tick old, server.api.deps.get_lazy_machine).
Without a version to go by (a database other than a SQLite file) every request reads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from fastapi import Response
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from server.services.machine import LazyMachine, MachineSource

MAX_BYTES = 32 * 2**20


class DatabaseVersion:
    """SQLite's data_version on a connection of its own: it changes when anything commits to the file."""

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()

    def __call__(self) -> int | None:
        """The version now; None when SQLite cannot say at this moment (then nothing kept is used)."""
        try:
            with self._lock:
                return int(self._connection.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None

    def close(self) -> None:
        with self._lock:
            self._connection.close()


@dataclass(frozen=True)
class _Kept:
    version: int
    body: bytes
    valid_until: float | None  # the clock's time after which it is not served (None: until the version changes)


@dataclass(frozen=True)
class _Read:
    version: int
    future: asyncio.Future[_Kept]


class _ReadFailed(Exception):
    """The read that others waited for failed; its own request got the error, they read for themselves."""


class ReadCache:
    """JSON answers by key, each served while the database's version is the one it was read at."""

    def __init__(
        self,
        version: Callable[[], int | None] | None,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._version, self._max_bytes, self._clock = version, max_bytes, clock
        self._kept: OrderedDict[Hashable, _Kept] = OrderedDict()
        self._bytes = 0
        self._reads: dict[Hashable, _Read] = {}

    async def answer(self, key: Hashable, read: Callable[[], BaseModel], machine: MachineSource = None) -> Response:
        """The JSON of `read()` (run in a thread when it runs), or the same answer kept since nothing changed.

        `machine` is the one `read` uses, if any: an answer that needed it is kept no longer than it is valid.
        Runs on the event loop only.
        """
        version = self._version() if self._version is not None else None
        if version is None:
            return _json((await run_in_threadpool(_kept, read, machine, 0)).body)
        kept = self._kept.get(key)
        if kept is not None and kept.version == version and self._valid(kept):
            self._kept.move_to_end(key)
            return _json(kept.body)
        pending = self._reads.get(key)
        if pending is not None and pending.version == version:
            try:
                return _json((await asyncio.shield(pending.future)).body)
            except _ReadFailed:
                pass
        return _json((await self._read(key, version, read, machine)).body)

    def _valid(self, kept: _Kept) -> bool:
        return kept.valid_until is None or self._clock() <= kept.valid_until

    async def _read(self, key: Hashable, version: int, read: Callable[[], BaseModel], machine: MachineSource) -> _Kept:
        pending = _Read(version, asyncio.get_running_loop().create_future())
        self._reads[key] = pending
        try:
            kept = await run_in_threadpool(_kept, read, machine, version)
        except BaseException:
            pending.future.set_exception(_ReadFailed())
            pending.future.exception()  # retrieved: nobody may have waited for it
            raise
        finally:
            if self._reads.get(key) is pending:
                del self._reads[key]
        self._keep(key, kept)
        pending.future.set_result(kept)
        return kept

    def _keep(self, key: Hashable, kept: _Kept) -> None:
        old = self._kept.get(key)
        if old is not None and old.version > kept.version:  # a slower, older read does not replace a newer one
            return
        if old is not None:
            self._bytes -= len(old.body)
        self._kept[key] = kept
        self._kept.move_to_end(key)
        self._bytes += len(kept.body)
        while self._bytes > self._max_bytes and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= len(dropped.body)


def _kept(read: Callable[[], BaseModel], machine: MachineSource, version: int) -> _Kept:
    """Read, serialize as FastAPI would (pydantic's serializer) and note until when the answer holds."""
    model = read()
    valid_until = machine.valid_until if isinstance(machine, LazyMachine) and machine.loaded else None
    return _Kept(version, model.__pydantic_serializer__.to_json(model, by_alias=True), valid_until)


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def make_read_cache(engine: Engine) -> tuple[ReadCache, Callable[[], None]]:
    """The cache for this engine's database, and what closes it; one that always reads where no version exists."""
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return ReadCache(None), lambda: None
    version = DatabaseVersion(path)
    return ReadCache(version), version.close
