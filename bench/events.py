"""How late the event stream is, with a hundred clients on it, and what they cost /healthz.

    .venv/bin/python -m bench.events [--clients 100] [--jobs 8] [--rate 20] [--seconds 15] [--procs 4]

A real daemon (bench.api_load's: `ftq serve` on a free port, 8 fake 80 GiB GPUs) runs 8 jobs whose
stand-in workers (bench.stream_worker) write 20 metric records a second each. First /healthz is loaded
alone (the baseline); then `--clients` clients follow `GET /events` (split over `--procs` processes, so
that parsing does not queue in one client's loop) while /healthz is loaded again the same way.

Delay: from the `timestamp` the worker wrote into a record's line of metrics.jsonl to the moment a client
has read that record's event, on the same clock; every client's every metric event counts. Each client
also checks that the ids it got are the ones the daemon's log holds, once each (a gap or a duplicate fails
the run). Targets (issue 11): delay p99 <= 200 ms, and /healthz p99 under the streams within 2x of alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.api_load import Daemon, _percentile, _wait, load_asyncio

HEALTHZ_CONNECTIONS = 4


# ---- a client process: N streams, the delay of each metric event ----


def _record_time(data: bytes) -> float | None:
    """The record's own timestamp, found without parsing the whole event (the clients' CPU is the daemon's
    too on a small machine)."""
    at = data.find(b'"timestamp":"')
    if at < 0:
        return None
    text = data[at + 13 : data.index(b'"', at + 13)].decode()
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _one_stream(url: str, seconds: float, delays: list[float], ids: list[int]) -> None:
    host, port = url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    deadline = time.monotonic() + seconds
    buffer = b""
    try:
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            now = time.time()
            buffer += chunk
            *messages, buffer = buffer.split(b"\n\n")
            for message in messages:
                _, _, body = message.partition(b"id: ")  # chunked transfer framing may precede it
                if not body:
                    continue
                ids.append(int(body[: body.index(b"\n")]))
                if b"\nevent: metric\n" in body:
                    written = _record_time(body)
                    if written is not None:
                        delays.append(now - written)
    finally:
        writer.close()


async def _listen(url: str, clients: int, seconds: float) -> dict[str, Any]:
    delays: list[float] = []
    ids: list[list[int]] = [[] for _ in range(clients)]
    await asyncio.gather(*(_one_stream(url, seconds, delays, ids[i]) for i in range(clients)))
    return {"delays": delays, "ids": ids}


def listen_main(url: str, clients: int, seconds: float, out: Path) -> None:
    out.write_text(json.dumps(asyncio.run(_listen(url, clients, seconds))))


# ---- the run ----


def logged_ids(data_dir: Path, first: int, last: int) -> list[int]:
    with sqlite3.connect(data_dir / "ftq.db") as db:
        rows = db.execute("SELECT id FROM events WHERE id BETWEEN ? AND ? ORDER BY id", (first, last))
        return [r[0] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--procs", type=int, default=4, help="client processes the clients are split over")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20.0, help="records per second per job")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the clients listen")
    parser.add_argument("--listen", nargs=4, metavar=("URL", "CLIENTS", "SECONDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen:
        url, clients, seconds, out = args.listen
        listen_main(url, int(clients), float(seconds), Path(out))
        return

    workdir = Path(tempfile.mkdtemp(prefix="ftq-events-bench-"))
    daemon = Daemon(workdir, args.rate)
    try:
        jobs = [daemon.submit(f"stream-{i}") for i in range(args.jobs)]
        _wait(lambda: all(daemon.job(i)["state"] == "running" for i in jobs), 60, "the streams to run")
        load_asyncio(daemon.url + "/healthz", 1.0, HEALTHZ_CONNECTIONS)  # warm up
        alone = load_asyncio(daemon.url + "/healthz", args.seconds, HEALTHZ_CONNECTIONS)

        outs = [workdir / f"clients-{p}.json" for p in range(args.procs)]
        shares = [args.clients // args.procs + (p < args.clients % args.procs) for p in range(args.procs)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.events", "--listen", daemon.url, str(n), str(args.seconds + 2), str(o)],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            )
            for n, o in zip(shares, outs, strict=True)
        ]
        time.sleep(1.5)  # every client connected before /healthz is measured beside them
        beside = load_asyncio(daemon.url + "/healthz", args.seconds, HEALTHZ_CONNECTIONS)
        for proc in procs:
            proc.wait(timeout=args.seconds + 60)
        results = [json.loads(o.read_text()) for o in outs]
    finally:
        daemon.stop()
    delays = sorted(d for r in results for d in r["delays"])
    streams = [ids for r in results for ids in r["ids"]]
    problems = []
    for n, ids in enumerate(streams):
        if not ids:
            problems.append(f"client {n}: no event")
            continue
        if ids != logged_ids(workdir / "ftq", ids[0], ids[-1]):
            problems.append(f"client {n}: its ids are not the log's between {ids[0]} and {ids[-1]}, once each")
    shutil.rmtree(workdir, ignore_errors=True)

    def ms(q: float) -> str:
        return f"{1000 * _percentile(delays, q):.0f} ms"

    print(
        f"daemon: {args.jobs} jobs x {args.rate:g} records/s on 8 fake GPUs; {args.clients} clients on GET /events "
        f"in {args.procs} processes for {args.seconds:g} s; /healthz by {HEALTHZ_CONNECTIONS} connections; "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| metric events read | delay p50 | p95 | p99 | max |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {len(delays):,} | {ms(50)} | {ms(95)} | {ms(99)} | {1000 * delays[-1]:.0f} ms |" if delays else "| 0 |")
    print()
    print("| /healthz | req/s | p50 | p99 |")
    print("| --- | --- | --- | --- |")
    for label, load in (("alone", alone), (f"beside {args.clients} streams", beside)):
        print(f"| {label} | {load.rate:.0f} | {load.p50_ms:.1f} ms | {load.p99_ms:.1f} ms |")
    ratio = beside.p99_ms / alone.p99_ms
    p99 = 1000 * _percentile(delays, 99) if delays else float("inf")
    print(f"\ndelay p99 {p99:.0f} ms (target <= 200 ms): {'PASS' if p99 <= 200 else 'FAIL'}")
    print(f"/healthz p99 beside the streams / alone: {ratio:.2f}x (target <= 2x): {'PASS' if ratio <= 2 else 'FAIL'}")
    print("every client got every event once, in order" if not problems else "\n".join(problems))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
