"""A soak: a real daemon under every kind of load at once for ten minutes; does it hold, and is nothing lost?

    .venv/bin/python -m bench.soak [--minutes 10] [--jobs 8] [--rate 200] [--readers 400] [--stuck 100]
                                   [--idle 2000] [--rss-bound-mib 512]

A real daemon (bench.api_load's: `ftq serve` on a free port, 8 fake 80 GiB GPUs) runs `--jobs` jobs whose
stand-in workers (bench.stream_worker) write `--rate` metric records a second each. Beside them, in a
client process of their own:

    readers   GET /events clients that read everything; when the daemon closes one (it fell behind), it
              comes back with Last-Event-ID, as a browser does
    stuck     GET /events clients that never read a byte (they are closed by the send timeout, and come back)
    idle      connections that send half a request's headers and wait (closed by the header timeout, and
              opened again), so that this many are open all along

and in this process, pollers on every route (one request after another, each route in turn), timing each.
Every 10 s the daemon's resident memory is sampled. At the end the jobs are cancelled and, once they have
ended, every line each worker wrote to its metrics.jsonl is counted against the rows the daemon stored.

It prints RSS over time, p50/p99 of each route, what the clients saw, and records stored against written.
It fails (exit 1) when a record is missing or doubled, a reader saw an id twice or out of order or missed
one, or the daemon's RSS went past `--rss-bound-mib` or grew by more than `--growth-bound` over the run's
second half (memory that grows without bound, rather than a plateau reached early).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.api_load import Daemon, _percentile, _wait

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20
TCP_ESTABLISHED = 1  # the first byte of TCP_INFO: the connection's state (linux/tcp_states.h)


# ---- the client process: readers, stuck clients, idle connections ----


class Tally:
    def __init__(self) -> None:
        self.events = 0
        self.reconnects = 0
        self.stuck_closed = 0
        self.idle_closed = 0
        self.refused = 0
        self.segments: list[tuple[int, int, int]] = []  # (first id, last id, events) of one reader connection
        self.disorder = 0  # ids that did not grow


async def _request(host: str, port: int, last_id: int | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    resume = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
    writer.write(f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n{resume}\r\n".encode())
    await writer.drain()
    return reader, writer


async def _reader(host: str, port: int, until: float, tally: Tally) -> None:
    """Reads every event; comes back with Last-Event-ID whenever the daemon closes it."""
    last: int | None = None
    while time.monotonic() < until:
        first, count, buffer = None, 0, b""
        try:
            reader, writer = await _request(host, port, last)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 200"):
                tally.refused += 1
                writer.close()
                await asyncio.sleep(1)
                continue
            while time.monotonic() < until:
                chunk = await asyncio.wait_for(reader.read(1 << 16), max(0.1, until - time.monotonic()))
                if not chunk:
                    break
                buffer += chunk
                *messages, buffer = buffer.split(b"\n\n")
                for message in messages:
                    at = message.find(b"id: ")
                    if at < 0:
                        continue
                    event_id = int(message[at + 4 : message.index(b"\n", at)])
                    if last is not None and event_id <= last:
                        tally.disorder += 1
                    first = event_id if first is None else first
                    last, count = event_id, count + 1
            writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        if first is not None and last is not None:
            tally.segments.append((first, last, count))
            tally.events += count
        if time.monotonic() < until:
            tally.reconnects += 1
            await asyncio.sleep(0.05)


async def _stuck(host: str, port: int, until: float, tally: Tally) -> None:
    """Asks for every event and never reads one (a raw socket, a small receive buffer); comes back when the daemon
    closes it. Its TCP state says so: a reader that never reads would never see the close."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            request = f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            while time.monotonic() < until and _established(sock):
                await asyncio.sleep(1)
            if time.monotonic() < until:
                tally.stuck_closed += 1
        except OSError:
            await asyncio.sleep(1)
        finally:
            sock.close()


def _established(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED


async def _idle(host: str, port: int, until: float, tally: Tally) -> None:
    """Half a request's headers, then nothing; opened again when the daemon closes it."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
            await writer.drain()
            await asyncio.wait_for(reader.read(), max(0.1, until - time.monotonic()))
            writer.close()
            if time.monotonic() < until:
                tally.idle_closed += 1
        except asyncio.TimeoutError:
            writer.close()
        except OSError:
            await asyncio.sleep(1)


async def _clients(url: str, seconds: float, readers: int, stuck: int, idle: int) -> Tally:
    host, port = url.split("//")[1].split(":")
    until = time.monotonic() + seconds
    tally = Tally()
    tasks = [_idle(host, int(port), until, tally) for _ in range(idle)]
    tasks += [_stuck(host, int(port), until, tally) for _ in range(stuck)]
    tasks += [_reader(host, int(port), until, tally) for _ in range(readers)]
    await asyncio.gather(*tasks)
    return tally


def clients_main(url: str, seconds: float, readers: int, stuck: int, idle: int, out: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tally = asyncio.run(_clients(url, seconds, readers, stuck, idle))
    out.write_text(json.dumps(tally.__dict__))


# ---- this process: pollers, memory, the count ----


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def poll_routes(url: str, routes: list[tuple[str, str]], until: float, out: dict[str, list[float]]) -> None:
    """Each route in turn, one request after another, until `until`; a failure counts as the timeout."""
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < until:
            for label, path in routes:
                began = time.perf_counter()
                try:
                    ok = http.get(path).status_code < 500
                except httpx.HTTPError:
                    ok = False
                out.setdefault(label, []).append(time.perf_counter() - began if ok else 30.0)
                out.setdefault(f"{label} errors", [])
                if not ok:
                    out[f"{label} errors"].append(1.0)
            time.sleep(0.05)


def written_and_stored(data_dir: Path) -> tuple[int, int, list[str]]:
    """Lines the workers wrote to their metrics.jsonl, rows the daemon stored, and each attempt that differs."""
    written = stored = 0
    problems = []
    with sqlite3.connect(data_dir / "ftq.db") as db:
        for path in sorted((data_dir / "runs").glob("job-*/attempt-*/metrics.jsonl")):
            lines = sum(1 for line in path.open("rb") if line.strip())
            job, number = int(path.parent.parent.name.split("-")[1]), int(path.parent.name.split("-")[1])
            rows = db.execute(
                "SELECT COUNT(*) FROM metrics JOIN attempts ON attempts.id = metrics.attempt_id "
                "WHERE attempts.job_id = ? AND attempts.number = ?",
                (job, number),
            ).fetchone()[0]
            written, stored = written + lines, stored + rows
            if lines != rows:
                problems.append(f"{path.parent.relative_to(data_dir)}: {lines} lines written, {rows} stored")
    return written, stored, problems


def missed_by_readers(data_dir: Path, segments: list[list[int]]) -> int:
    """Events between each reader connection's first and last id that the connection did not get."""
    missed = 0
    with sqlite3.connect(data_dir / "ftq.db") as db:
        for first, last, count in segments:
            logged = db.execute("SELECT COUNT(*) FROM events WHERE id BETWEEN ? AND ?", (first, last)).fetchone()[0]
            missed += logged - count
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0, help="records per second per job")
    parser.add_argument("--readers", type=int, default=400)
    parser.add_argument("--stuck", type=int, default=100)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--rss-bound-mib", type=float, default=640.0)
    parser.add_argument("--growth-bound", type=float, default=0.10, help="RSS growth allowed over the second half")
    parser.add_argument("--clients", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        url, seconds, readers, stuck, idle, out = args.clients
        clients_main(url, float(seconds), int(readers), int(stuck), int(idle), Path(out))
        return
    sys.exit(run(args))


def run(args: argparse.Namespace) -> int:
    seconds = 60 * args.minutes
    workdir = Path(tempfile.mkdtemp(prefix="ftq-soak-"))
    daemon = Daemon(workdir, args.rate, {"BENCH_STREAM_S": str(int(seconds + 300))})
    rss: list[tuple[float, float]] = []
    latencies: dict[str, list[float]] = {}
    try:
        jobs = [daemon.submit(f"soak-{i}") for i in range(args.jobs)]
        _wait(lambda: all(daemon.job(i)["state"] == "running" for i in jobs), 60, "the jobs to run")
        routes = [
            ("GET /healthz", "/healthz"),
            ("GET /jobs/{id}", f"/jobs/{jobs[0]}"),
            ("GET /jobs", "/jobs?limit=100"),
            ("GET /jobs/{id}/metrics", f"/jobs/{jobs[1]}/metrics?limit=1000"),
            ("GET /jobs/{id}/logs", f"/jobs/{jobs[2]}/logs"),
            ("GET /gpus", "/gpus"),
            ("GET /metrics", "/metrics"),
            ("GET /compare", f"/compare?ids={jobs[0]}&ids={jobs[1]}"),
            ("GET / (dashboard)", "/"),
        ]
        out = workdir / "clients.json"
        clients = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--clients", daemon.url, str(seconds)]
            + [str(args.readers), str(args.stuck), str(args.idle), str(out)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        began = time.monotonic()
        until = began + seconds
        poller = threading.Thread(target=poll_routes, args=(daemon.url, routes, until, latencies), daemon=True)
        poller.start()
        while time.monotonic() < until:
            mib = rss_mib(daemon.proc.pid)
            if mib is not None:
                rss.append((time.monotonic() - began, mib))
            time.sleep(min(10.0, max(0.0, until - time.monotonic())))
        poller.join(60)
        clients.wait(timeout=120)
        rss.append((time.monotonic() - began, rss_mib(daemon.proc.pid) or float("nan")))
        tally = json.loads(out.read_text())
    finally:
        daemon.stop()
    written, stored, lost = written_and_stored(workdir / "ftq")
    missed = missed_by_readers(workdir / "ftq", tally["segments"])
    peak = max(m for _, m in rss)
    report(args, rss, latencies, tally, written, stored, missed)
    problems = lost + ([f"readers missed {missed} events"] if missed else [])
    problems += [f"{tally['disorder']} ids came twice or out of order"] if tally["disorder"] else []
    problems += [f"RSS peaked at {peak:.0f} MiB, over the bound of {args.rss_bound_mib:.0f}"] * (
        peak > args.rss_bound_mib
    )
    half = min(rss, key=lambda r: abs(r[0] - seconds / 2))[1]
    growth = max(m for _, m in rss if _ >= seconds / 2) / half - 1
    problems += [f"RSS grew {growth:.0%} over the second half (from {half:.0f} MiB), over {args.growth_bound:.0%}"] * (
        growth > args.growth_bound
    )
    print(
        "\n" + ("PASS: nothing lost, memory within the bound" if not problems else "FAIL:\n  " + "\n  ".join(problems))
    )
    if problems:
        print(f"(the data dir is kept: {workdir})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


def report(
    args: argparse.Namespace,
    rss: list[tuple[float, float]],
    latencies: dict[str, list[float]],
    tally: dict[str, Any],
    written: int,
    stored: int,
    missed: int,
) -> None:
    print(
        f"soak: {args.minutes:g} min; {args.jobs} jobs x {args.rate:g} records/s on 8 fake GPUs; "
        f"{args.readers} reading + {args.stuck} stuck GET /events clients; {args.idle} idle connections; "
        f"pollers on {len([k for k in latencies if not k.endswith('errors')])} routes; {os.cpu_count()} CPUs\n"
    )
    print("| minute | daemon RSS |")
    print("| --- | --- |")
    marks = sorted({min(rss, key=lambda r: abs(r[0] - 60 * m)) for m in range(0, int(args.minutes) + 1)})
    for at, mib in marks + ([rss[-1]] if rss[-1] not in marks else []):
        print(f"| {at / 60:.1f} | {mib:.0f} MiB |")
    print(
        f"\npeak {max(m for _, m in rss):.0f} MiB (bound {args.rss_bound_mib:.0f} MiB; growth over the second half "
        f"at most {args.growth_bound:.0%})\n"
    )
    print("| route | requests | errors | p50 | p99 |")
    print("| --- | --- | --- | --- | --- |")
    for label, values in latencies.items():
        if label.endswith("errors"):
            continue
        errors = len(latencies.get(f"{label} errors", []))
        p50, p99 = 1000 * _percentile(values, 50), 1000 * _percentile(values, 99)
        print(f"| {label} | {len(values):,} | {errors} | {p50:.0f} ms | {p99:.0f} ms |")
    print(
        f"\nreaders: {tally['events']:,} events read, {tally['reconnects']:,} resumes by Last-Event-ID, "
        f"{missed} missed, {tally['disorder']} twice or out of order; refused {tally['refused']}"
    )
    print(
        f"stuck clients closed by the daemon: {tally['stuck_closed']:,}; "
        f"idle connections closed: {tally['idle_closed']:,}"
    )
    print(f"records: {written:,} written by the workers, {stored:,} stored")


if __name__ == "__main__":
    main()
