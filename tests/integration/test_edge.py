"""A daemon no client can exhaust, against a real daemon: idle connections with partial headers (2,000 with a
usual open-file limit; 400 with a hard limit of 256) leave /healthz and GET /jobs answering and the log quiet,
and 500 event-stream clients that never read during a burst of records keep the daemon's memory within its
stated bound (docs/volume.md), are closed by the send timeout, and resume by Last-Event-ID losing nothing."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.daemon import STANDIN_WORKER, Daemon
from tests.integration.sse import follow, parse
from tests.integration.test_events import logged_ids

pytestmark = pytest.mark.integration

NOFILE = resource.RLIMIT_NOFILE
PARTIAL = b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never-Ending: "  # headers that never end
ACCEPT_ERROR = "socket.accept() out of system resource"  # asyncio's words
SSE_MEMORY_BOUND_MIB = 100  # over the daemon's RSS before the clients came (docs/volume.md)


@contextlib.contextmanager
def open_files(need: int) -> Iterator[int]:
    """This test process's soft open-file limit raised to its hard limit (skipped when that is below `need`);
    yields the hard limit, and puts the soft one back after."""
    soft, hard = resource.getrlimit(NOFILE)
    if hard < need:
        pytest.skip(f"the open-file hard limit is {hard}; this test needs {need} (raise it with ulimit -Hn)")
    resource.setrlimit(NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(NOFILE, (soft, hard))


def idle_connections(port: int, n: int, opening: bytes = PARTIAL) -> list[socket.socket]:
    """`n` connections that each sent the start of a request and nothing more (those refused are left out)."""
    held = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(opening)
        except OSError:
            s.close()
            continue
        held.append(s)
    return held


def closed_by_server(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_healthz_and_jobs_answer_while_2000_idle_connections_are_open(tmp_path: Path) -> None:
    with open_files(4500) as hard:
        d = Daemon(tmp_path / "ftq", worker_module=STANDIN_WORKER, header_timeout_s="120")
        d.env["PYTHONPATH"] = str(REPO)
        # Started with the soft limit a usual login leaves (ulimit -n 1024): the daemon raises it itself.
        d.preexec_fn = lambda: resource.setrlimit(NOFILE, (1024, hard))
        d.start()
        held: list[socket.socket] = []
        try:
            held = idle_connections(d.port, 2000)
            assert len(held) == 2000
            with httpx.Client(base_url=f"http://127.0.0.1:{d.port}", timeout=10) as fresh:
                assert fresh.get("/healthz").status_code == 200
                assert fresh.get("/jobs").status_code == 200
                submitted = fresh.post("/jobs", json=tiny_spec(name="past-the-idle", gpus=0, max_steps=2))
                assert submitted.status_code == 201, submitted.text
            assert f"open files: {hard} (raised from 1024)" in d.log()
            assert ACCEPT_ERROR not in d.log()
        finally:
            for s in held:
                s.close()
            d.close()


def test_with_few_open_files_idle_connections_are_shed_and_the_log_stays_short(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "ftq", cpu_slots="0", header_timeout_s="2")
    d.preexec_fn = lambda: resource.setrlimit(NOFILE, (256, 256))
    d.start()
    held: list[socket.socket] = []
    try:
        held = idle_connections(d.port, 400)
        with httpx.Client(base_url=f"http://127.0.0.1:{d.port}", timeout=2) as fresh:

            def answers() -> bool:
                try:
                    return fresh.get("/healthz").status_code == 200 and fresh.get("/jobs").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(answers, timeout=20)
        # every idle one is closed: shed over the cap at once, or at the header timeout
        assert all(closed_by_server(s, timeout=10) for s in held)
        log = d.log()
        accept_errors = [line for line in log.splitlines() if ACCEPT_ERROR in line]
        assert len(accept_errors) <= 4, accept_errors[:10]
        assert log.count("Traceback") <= 1, log[-3000:]
        assert "open files: 256" in log
    finally:
        for s in held:
            s.close()
        d.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def non_readers(port: int, n: int) -> list[socket.socket]:
    """`n` clients of GET /events that take 4 KiB into their receive buffer and never read."""
    held = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        held.append(s)
    return held


def read_to_end(s: socket.socket, timeout: float = 30) -> bytes:
    """What the server sent on `s` up to its close (which must come within `timeout`). A client dropped for taking
    no data is reset (server/http_edge.py): what its receive buffer held is still read first."""
    s.settimeout(timeout)
    got = b""
    try:
        while chunk := s.recv(1 << 16):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def sse_ids(raw: bytes) -> list[int]:
    """The ids of the complete SSE messages in a raw HTTP/1.1 chunked response, cut off anywhere."""
    _, _, body = raw.partition(b"\r\n\r\n")
    text = b""
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep or not size_line:
            break
        size = int(size_line, 16)
        if size == 0 or len(rest) < size:
            text += rest[:size]
            break
        text += rest[:size]
        body = rest[size + 2 :]
    complete = text[: text.rfind(b"\n\n") + 2].decode()
    return [m.id for m in parse(complete.split("\n")) if m.id is not None]


def test_clients_that_never_read_are_closed_hold_bounded_memory_and_resume_losing_nothing(tmp_path: Path) -> None:
    with open_files(1200):
        d = Daemon(tmp_path / "ftq", worker_module=STANDIN_WORKER, cpu_slots="1", send_timeout_s="2")
        d.env.update(PYTHONPATH=str(REPO), STANDIN_STEP_S="0.0002")
        d.start()
        assert d.proc is not None
        pid = d.proc.pid
        held: list[socket.socket] = []
        try:
            before, fds_before = rss_mib(pid), open_fds(pid)
            held = non_readers(d.port, 500)
            peak, stop = [before], threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak.append(rss_mib(pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            job_id = d.submit(tiny_spec(name="burst", gpus=0, max_steps=5000))["id"]
            wait_for(lambda: d.ended(job_id), timeout=120)
            assert d.http.get("/healthz").status_code == 200
            stop.set()
            sampler.join()
            assert d.job(job_id)["state"] == "succeeded"
            assert max(peak) - before < SSE_MEMORY_BOUND_MIB, (before, max(peak))
            # every client that never read is closed by the daemon: it holds no socket for them any more
            wait_for(lambda: open_fds(pid) < fds_before + 20, timeout=30, what="the non-readers' sockets closed")
            assert "Traceback" not in d.log()

            end_id = logged_ids(d.data_dir, job_id)[-1]
            for s in held[:3]:
                first = sse_ids(read_to_end(s))
                assert first and first[-1] < end_id  # it fell behind, and was closed before the job's end
                rest = follow(
                    f"http://127.0.0.1:{d.port}/events",
                    until=lambda m: any(x.id == end_id for x in m),
                    last_event_id=first[-1],
                )
                ids = [i for i in first + [m.id for m in rest.messages if m.id is not None] if i <= end_id]
                assert ids == [i for i in logged_ids(d.data_dir) if first[0] <= i <= end_id]
        finally:
            for s in held:
                s.close()
            d.close()
