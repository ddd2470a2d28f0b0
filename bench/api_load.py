"""How fast the API answers the polls people make while jobs stream their records, beside /healthz.

    .venv/bin/python -m bench.api_load [--seconds 8] [--connections 16] [--rounds 1] [--client auto]

A real daemon (`python -m server.cli serve` on a free port, a temporary data dir, 8 fake
80 GiB GPUs) runs 8 jobs whose stand-in workers (bench.stream_worker) write 20 metric
records a second each, for as long as the benchmark runs, and holds 100 more jobs, half
queued behind them and half cancelled, so that a page of `GET /jobs?limit=100` is full.
Then each route is loaded in turn by the same client, with the same connections:

    GET /healthz                the floor: no database, no work
    GET /jobs/{id}              a running job, its records arriving as it is polled
    GET /jobs?limit=100         a full page: running, queued (with their wait reasons) and ended jobs
    GET /jobs/{id} (queued)     a queued job, whose wait reason needs the GPUs and the leases

The client is wrk when it is installed (`apt-get install wrk`), else an asyncio client on raw
keep-alive connections. Figures: requests per second, p50 and p99 latency, and each route's
requests per second over /healthz's in the same run; "records/s" is how many records the
daemon stored per second while the route was loaded (8 x 20 = 160 when it keeps up), and
"daemon CPU/req" the daemon's CPU time over the requests it answered (its scheduler's
included): on a machine shared with other work, the steadier figure of what a request costs.
With --rounds N the routes are loaded N times in turn and each figure is the median.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
MACHINE = "8x80GiB"
TERMINAL = {"succeeded", "failed", "oom", "cancelled"}


def job_spec(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model_name_or_path": "configs/models/tiny-chat",
        "dataset_dir": "configs/data",
        "dataset": "cs_billing",
        "cutoff_len": 128,
        "per_device_train_batch_size": 4,
        "max_steps": 1000,
        "gpus": 1,
    }


@dataclass
class Load:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float | None = None  # the daemon's CPU time per request (its scheduler's included)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# ---- the load clients ----


def load_wrk(url: str, seconds: float, connections: int) -> Load:
    threads = max(1, min(2, connections, os.cpu_count() or 1))
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    took = _duration_s(re.search(r"requests in ([\d.]+\w+),", out)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx[1]) if non_2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    p50 = _duration_s(re.search(r"50%\s+([\d.]+\w+)", out)[1])  # type: ignore[index]
    p99 = _duration_s(re.search(r"99%\s+([\d.]+\w+)", out)[1])  # type: ignore[index]
    return Load(requests, errors, took, p50 * 1000, p99 * 1000)


def _duration_s(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def load_asyncio(url: str, seconds: float, connections: int) -> Load:
    return asyncio.run(_load_asyncio(url, seconds, connections))


async def _load_asyncio(url: str, seconds: float, connections: int) -> Load:
    """`connections` keep-alive HTTP/1.1 connections, each sending its next request as the last one's answer ends."""
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    target = parsed.raw_path.decode()
    request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: ftq-bench\r\n\r\n".encode()
    latencies: list[float] = []
    errors = 0
    began = time.perf_counter()
    deadline = began + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if length is None:
                    raise RuntimeError(f"no Content-Length in the answer to {target}: {head[:200]!r}")
                await reader.readexactly(int(length[1]))
                latencies.append(time.perf_counter() - sent)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    took = time.perf_counter() - began
    return Load(len(latencies), errors, took, 1000 * _percentile(latencies, 50), 1000 * _percentile(latencies, 99))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


# ---- the daemon ----


class Daemon:
    """`ftq serve` on a free port with a temporary data dir, as bench.schedule runs it."""

    def __init__(
        self, workdir: Path, rate: float, settings: dict[str, str] | None = None, repo: Path = REPO, timeout: float = 60
    ) -> None:
        """`repo`: the checkout whose code and configs it runs (another one for a baseline); `timeout`: the client's."""
        self.port = _free_port()
        self.log_path = workdir / "daemon.log"
        env = {
            **os.environ,
            "FTQ_DATA_DIR": str(workdir / "ftq"),
            "FTQ_FAKE_GPUS": MACHINE,
            "FTQ_INPUT_DIRS": str(repo),
            "FTQ_WORKER_MODULE": "bench.stream_worker",
            "FTQ_CANCEL_GRACE_S": "5",
            "BENCH_RECORDS_PER_S": str(rate),
            "PYTHONPATH": str(repo),
            **(settings or {}),
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)],
                cwd=repo,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        _wait(self._healthy, 60, "the daemon to answer /healthz")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited: {self.log_path.read_text()[-3000:]}")
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def submit(self, name: str) -> int:
        return int(self.http.post("/jobs", json=job_spec(name)).raise_for_status().json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return self.http.get(f"/jobs/{job_id}").raise_for_status().json()

    def cpu_s(self) -> float | None:
        """The daemon's CPU time so far (user + system, all its threads); None where /proc cannot say."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Cancel what still runs (the workers end with an `end` record), then stop the daemon."""
        try:
            live = [j["id"] for j in self.http.get("/jobs", params={"limit": 1000}).json()["data"]]
            live = [i for i in live if self.job(i)["state"] not in TERMINAL]
            for job_id in live:
                self.http.post(f"/jobs/{job_id}/cancel")
            _wait(lambda: all(self.job(i)["state"] in TERMINAL for i in live), 30, "the streams to end")
        finally:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def stored_steps(daemon: Daemon, ids: list[int]) -> int:
    return sum((daemon.job(i).get("progress") or {}).get("current_steps", 0) for i in ids)


# ---- the run ----


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="load per route per round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="load the routes this many times in turn")
    parser.add_argument("--jobs", type=int, default=8, help="streaming jobs (one fake GPU each)")
    parser.add_argument("--rate", type=float, default=20.0, help="records per second per streaming job")
    parser.add_argument("--extra", type=int, default=100, help="more jobs, half queued, half cancelled")
    parser.add_argument("--client", choices=("auto", "wrk", "asyncio"), default="auto")
    args = parser.parse_args()

    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    client: Callable[[str, float, int], Load] = load_wrk if use_wrk else load_asyncio
    workdir = Path(tempfile.mkdtemp(prefix="ftq-api-load-"))
    daemon = Daemon(workdir, args.rate)
    try:
        streams = [daemon.submit(f"stream-{i}") for i in range(args.jobs)]
        _wait(lambda: all(daemon.job(i)["state"] == "running" for i in streams), 60, "the streams to run")
        extra = [daemon.submit(f"extra-{i:03d}") for i in range(args.extra)]
        for job_id in extra[::2]:
            daemon.http.post(f"/jobs/{job_id}/cancel").raise_for_status()
        queued = next(i for i in extra if daemon.job(i)["state"] == "queued")
        page = daemon.http.get("/jobs", params={"limit": 100}).raise_for_status().json()
        states = ", ".join(f"{n} {state}" for state, n in Counter(j["state"] for j in page["data"]).items())
        routes = [
            ("GET /healthz", "/healthz"),
            ("GET /jobs/{id}", f"/jobs/{streams[0]}"),
            ("GET /jobs?limit=100", "/jobs?limit=100"),
            ("GET /jobs/{id} (queued)", f"/jobs/{queued}"),
        ]
        print(
            f"daemon: {args.jobs} jobs streaming {args.rate:g} records/s each on {MACHINE} (fake), "
            f"a page of {len(page['data'])} of {page['count']} jobs ({states}); "
            f"client: {'wrk' if use_wrk else 'asyncio'}, {args.connections} connections, "
            f"{args.seconds:g} s a route, {args.rounds} round(s); {os.cpu_count()} CPUs\n"
        )
        for _, path in routes:  # warm up: imports, the pool, the caches
            client(daemon.url + path, 1.0, args.connections)
        results: dict[str, list[tuple[Load, float]]] = {label: [] for label, _ in routes}
        for _ in range(args.rounds):
            for label, path in routes:
                steps, began = stored_steps(daemon, streams), time.monotonic()
                cpu = daemon.cpu_s()
                load = client(daemon.url + path, args.seconds, args.connections)
                after = daemon.cpu_s()
                load.cpu_ms = 1000 * (after - cpu) / load.requests if cpu is not None and after is not None else None
                stored = (stored_steps(daemon, streams) - steps) / (time.monotonic() - began)
                results[label].append((load, stored))
        _print_table(results)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _print_table(results: dict[str, list[tuple[Load, float]]]) -> None:
    base = statistics.median(load.rate for load, _ in results["GET /healthz"])
    header = ("route", "req/s", "p50", "p99", "/ healthz", "errors", "records/s", "daemon CPU/req")
    rows = [header]
    for label, runs in results.items():
        rate = statistics.median(load.rate for load, _ in runs)
        rows.append(
            (
                label,
                f"{rate:.0f}",
                f"{statistics.median(load.p50_ms for load, _ in runs):.1f} ms",
                f"{statistics.median(load.p99_ms for load, _ in runs):.1f} ms",
                f"{rate / base:.2f}",
                str(sum(load.errors for load, _ in runs)),
                f"{statistics.median(stored for _, stored in runs):.0f}",
                _cpu(runs),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    if len(next(iter(results.values()))) > 1:
        print("\neach round, req/s (p99 ms):")
        for label, runs in results.items():
            print(f"  {label}: " + ", ".join(f"{load.rate:.0f} ({load.p99_ms:.0f})" for load, _ in runs))
    ratios = {label: statistics.median(load.rate for load, _ in runs) / base for label, runs in results.items()}
    print(
        f"\nratio to /healthz: GET /jobs/{{id}} {ratios['GET /jobs/{id}']:.2f}, "
        f"GET /jobs?limit=100 {ratios['GET /jobs?limit=100']:.2f} (target >= 0.5, p99 <= 50 ms)"
    )


def _cpu(runs: list[tuple[Load, float]]) -> str:
    known = [load.cpu_ms for load, _ in runs if load.cpu_ms is not None]
    return f"{statistics.median(known):.2f} ms" if known else "-"


# ---- helpers ----


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out waiting for {what}")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
