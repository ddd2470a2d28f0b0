"""ReadCache: an answer is served again only while the database's version is the one it was read at."""

from __future__ import annotations

import asyncio
import json
import threading

from pydantic import BaseModel

from server.api.read_cache import ReadCache
from server.services.machine import LazyMachine, Machine


class Page(BaseModel):
    n: int


class Reads:
    """A read that counts its calls and answers the call's number."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls, self.delay, self.fail = 0, delay, fail
        self.lock = threading.Lock()

    def __call__(self) -> Page:
        with self.lock:
            self.calls += 1
            n = self.calls
        if self.delay:
            threading.Event().wait(self.delay)
        if self.fail:
            raise LookupError("no such job")
        return Page(n=n)


def body(response) -> int:  # type: ignore[no-untyped-def]
    return json.loads(response.body)["n"]


def test_an_answer_is_kept_until_the_version_changes():
    version = [1]
    cache, read = ReadCache(lambda: version[0]), Reads()

    async def run() -> list[int]:
        seen = [body(await cache.answer("a", read)) for _ in range(3)]
        version[0] = 2  # something committed
        seen.append(body(await cache.answer("a", read)))
        seen.append(body(await cache.answer("b", read)))  # another key reads for itself
        return seen

    assert asyncio.run(run()) == [1, 1, 1, 2, 3]
    assert read.calls == 3


def test_without_a_version_every_request_reads():
    for version in (None, lambda: None):
        cache, read = ReadCache(version), Reads()
        asyncio.run(cache.answer("a", read))
        asyncio.run(cache.answer("a", read))
        assert read.calls == 2


def test_an_answer_that_used_the_machine_is_not_served_past_its_snapshot():
    now = [10.0]
    cache, read = ReadCache(lambda: 1, clock=lambda: now[0]), Reads()
    unused = LazyMachine(lambda: (Machine([], {}, 1, 0), 0.0))

    def machine() -> LazyMachine:
        return LazyMachine(lambda: (Machine([], {}, 1, 0), 11.0))  # its GPU snapshot holds until 11.0

    async def run() -> list[int]:
        seen = []
        m = machine()
        seen.append(body(await cache.answer("q", lambda: (m(), read())[1], m)))
        now[0] = 11.0
        seen.append(body(await cache.answer("q", read, machine())))  # still valid
        now[0] = 11.5
        seen.append(body(await cache.answer("q", read, machine())))  # too old: read again, not using it now
        now[0] = 99.0
        seen.append(body(await cache.answer("q", read, unused)))  # that read did not need it: kept
        return seen

    assert asyncio.run(run()) == [1, 1, 2, 2]


def test_requests_that_come_during_a_read_wait_for_it_and_a_new_version_reads_again():
    version = [1]
    cache, read = ReadCache(lambda: version[0]), Reads(delay=0.2)

    async def run() -> list[int]:
        first = [asyncio.create_task(cache.answer("a", read)) for _ in range(5)]
        await asyncio.sleep(0.05)
        version[0] = 2  # a commit during the read: a request from now on must not get that read's answer
        later = asyncio.create_task(cache.answer("a", read))
        return [body(r) for r in await asyncio.gather(*first, later)]

    assert asyncio.run(run()) == [1, 1, 1, 1, 1, 2]
    assert read.calls == 2


def test_a_failed_read_fails_its_own_request_and_the_waiting_ones_read_for_themselves():
    cache, read = ReadCache(lambda: 1), Reads(delay=0.1, fail=True)

    async def run() -> list[BaseException | None]:
        tasks = [asyncio.create_task(cache.answer("a", read)) for _ in range(3)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, LookupError) for r in results)
    assert read.calls == 3  # nothing failed is kept, nor handed to another request


def test_the_oldest_answers_go_first_beyond_the_byte_limit():
    cache, read = ReadCache(lambda: 1, max_bytes=20), Reads()

    async def run() -> int:
        for key in ("a", "b", "c"):  # 7 bytes each
            await cache.answer(key, read)
        await cache.answer("a", read)  # dropped: read again
        return read.calls

    assert asyncio.run(run()) == 4


def test_answers_are_the_models_json():
    cache = ReadCache(lambda: 1)
    response = asyncio.run(cache.answer("a", lambda: Page(n=7)))
    assert response.body == b'{"n":7}' and response.media_type == "application/json"
