"""How well ftq places fine-tunes: a 300-job trace on 8 GPUs of mixed sizes, against two baselines.

    .venv/bin/python -m bench.schedule [--jobs 300] [--seed 7] [--scale 1.0] [--no-daemon]

1. The trace: jobs drawn from a menu of real shapes (Qwen2.5-0.5B, Llama-3.2-1B,
   Llama-2-7B; LoRA, full, gradient checkpointing, ZeRO-3 over 2-8 GPUs) whose
   per-GPU memory comes from ftq's estimator, with durations of a few seconds.
2. A discrete-event simulation of the same trace under ftq's policy (`plan`),
   strict FIFO (the head blocks everything behind it, as a person's queue does)
   and one job at a time (task-spooler's default), on the same fake machine.
3. The real daemon (uvicorn, SQLite, worker subprocesses that hold their GPUs
   for the traced duration instead of training) running the trace under ftq's
   policy, timed from the database and the workers' own records.
4. One placement pass at 10,000 queued jobs on 64 GPUs.

Figures: makespan / lower bound (the larger of total GPU-time / GPUs and the
longest job); the share of GPU-time idle while a job that would fit on the idle
GPUs waits; submit -> worker-start latency p50 / p99; the longest wait of a
multi-GPU job.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from scheduler.gpus.fake import FakeProbe
from scheduler.gpus.types import GpuInfo
from scheduler.policy.estimate import estimate_for_spec
from scheduler.policy.placement import Placement, QueuedJob, place, plan
from worker.spec.job import JobSpec
from worker.spec.units import GIB

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "tests/fixtures/model_configs"
MACHINE = "4x80GiB,4x40GiB"
MARGIN = GIB

# (weight, model, gpus, spec fields, duration range in seconds)
MENU: list[tuple[float, str, int, dict[str, Any], tuple[float, float]]] = [
    (30, "qwen2.5-0.5b", 1, {"per_device_train_batch_size": 2}, (1.0, 3.0)),
    (15, "llama-3.2-1b", 1, {"per_device_train_batch_size": 4}, (1.5, 4.0)),
    (10, "llama-3.2-1b", 1, {"per_device_train_batch_size": 8, "gradient_checkpointing": True}, (2.0, 4.0)),
    (8, "qwen2.5-0.5b", 1, {"per_device_train_batch_size": 16}, (2.0, 5.0)),  # needs an 80 GiB card
    (7, "llama-3.2-1b", 1, {"finetuning_type": "full", "pure_bf16": True, "per_device_train_batch_size": 4}, (2, 5)),
    (12, "llama-2-7b", 2, {"gradient_checkpointing": True, "per_device_train_batch_size": 4}, (2.0, 5.0)),
    (5, "llama-2-7b", 2, {"per_device_train_batch_size": 8, "gradient_checkpointing": True}, (2.0, 5.0)),
    (
        8,
        "llama-2-7b",
        4,
        {
            "finetuning_type": "full",
            "pure_bf16": True,
            "gradient_checkpointing": True,
            "deepspeed": "ds_z3.json",
            "per_device_train_batch_size": 4,
        },
        (3.0, 6.0),
    ),
    (
        5,
        "llama-2-7b",
        8,
        {
            "finetuning_type": "full",
            "pure_bf16": True,
            "gradient_checkpointing": True,
            "deepspeed": "ds_z3.json",
            "per_device_train_batch_size": 8,
        },
        (3.0, 6.0),
    ),
]
Z3 = {"zero_optimization": {"stage": 3}}


@dataclass(frozen=True)
class TraceJob:
    name: str
    spec: dict[str, Any]
    gpus: int
    need_bytes: int
    duration: float
    submit: float = 0.0


def with_arrivals(trace: list[TraceJob], load: float, gpu_count: int, seed: int) -> list[TraceJob]:
    """The same jobs arriving one by one (Poisson), offering `load` of the machine's capacity."""
    rng = random.Random(seed)
    rate = load * gpu_count / statistics.mean(j.gpus * j.duration for j in trace)  # jobs per second
    t, out = 0.0, []
    for job in trace:
        out.append(TraceJob(job.name, job.spec, job.gpus, job.need_bytes, job.duration, round(t, 3)))
        t += rng.expovariate(rate)
    return out


def make_trace(count: int, seed: int, scale: float, model_dirs: dict[str, Path], ds_path: Path) -> list[TraceJob]:
    rng = random.Random(seed)
    weights = [m[0] for m in MENU]
    jobs = []
    for i in range(count):
        _, model, gpus, fields, (lo, hi) = rng.choices(MENU, weights)[0]
        spec = {
            "name": f"trace-{i:04d}",
            "gpus": gpus,
            "model_name_or_path": str(model_dirs[model]),
            "dataset_dir": str(REPO / "configs/data"),
            "dataset": "cs_billing",
            "cutoff_len": 1024,
            "bf16": True,
            **fields,
        }
        if "deepspeed" in spec:
            spec["deepspeed"] = str(ds_path)
        config = json.loads((model_dirs[model] / "config.json").read_text())
        need = estimate_for_spec(config, JobSpec(**spec), Z3 if "deepspeed" in spec else None).per_gpu
        jobs.append(TraceJob(spec["name"], spec, gpus, need, round(rng.uniform(lo, hi) * scale, 3)))
    return jobs


# ---- the simulation ----

Policy = Callable[[list[QueuedJob], list[GpuInfo], set[str], int], list[Placement]]


def ftq_policy(queue: list[QueuedJob], gpus: list[GpuInfo], leased: set[str], running: int) -> list[Placement]:
    return plan(queue, gpus, leased, 0, MARGIN).placements


def fifo_policy(queue: list[QueuedJob], gpus: list[GpuInfo], leased: set[str], running: int) -> list[Placement]:
    """Strict FIFO: jobs start in order, and the first that does not fit blocks all behind it."""
    placed: list[Placement] = []
    taken = set(leased)
    for job in sorted(queue, key=lambda j: j.seq):
        got = place([job], gpus, taken, 0, MARGIN)
        if not got:
            break
        placed += got
        taken |= set(got[0].resources)
    return placed


def serial_policy(queue: list[QueuedJob], gpus: list[GpuInfo], leased: set[str], running: int) -> list[Placement]:
    """One job at a time, whatever the machine has (task-spooler's default)."""
    if running or not queue:
        return []
    return place([min(queue, key=lambda j: j.seq)], gpus, set(), 0, MARGIN)


@dataclass
class Run:
    """One job's life in a schedule: seconds from the trace's start, and the GPUs it held."""

    start: float
    end: float
    resources: tuple[str, ...]


def makespan(runs: dict[str, Run]) -> float:
    return max(r.end for r in runs.values())


def idle_fit_share(trace: Sequence[TraceJob], runs: dict[str, Run], gpus: list[GpuInfo]) -> float:
    """GPU-time left idle while a waiting job would have fit on the idle GPUs alone, over all GPU-time.

    A job waits from its submit time to its start.
    """
    moments = sorted({0.0, *(r.start for r in runs.values()), *(r.end for r in runs.values())})
    wasted = 0.0
    for t0, t1 in zip(moments, moments[1:], strict=False):
        held = {g for r in runs.values() if r.start <= t0 < r.end for g in r.resources}
        idle = [g for g in gpus if g.uuid not in held]
        waiting = {(j.gpus, j.need_bytes) for j in trace if j.submit <= t0 < runs[j.name].start}
        if idle and any(sum((g.memory_free or 0) >= need + MARGIN for g in idle) >= n for n, need in waiting):
            wasted += (t1 - t0) * len(idle)
    return wasted / (len(gpus) * makespan(runs))


def simulate(trace: Sequence[TraceJob], policy: Policy, gpus: list[GpuInfo]) -> dict[str, Run]:
    """Jobs join the queue at their submit time; the policy is asked again at every arrival and end."""
    arrivals = sorted(range(len(trace)), key=lambda i: trace[i].submit)
    queue: dict[int, QueuedJob] = {}
    leases: dict[int, tuple[str, ...]] = {}
    ends: list[tuple[float, int]] = []
    runs: dict[str, Run] = {}
    now, next_arrival = 0.0, 0
    while next_arrival < len(arrivals) or queue or ends:
        while next_arrival < len(arrivals) and trace[arrivals[next_arrival]].submit <= now:
            i = arrivals[next_arrival]
            queue[i] = QueuedJob(i, 0, i, trace[i].gpus, trace[i].need_bytes)
            next_arrival += 1
        leased = {r for rs in leases.values() for r in rs}
        for p in policy(list(queue.values()), gpus, leased, len(leases)):
            del queue[p.job_id]
            leases[p.job_id] = p.resources
            job = trace[p.job_id]
            runs[job.name] = Run(now, now + job.duration, p.resources)
            heapq.heappush(ends, (now + job.duration, p.job_id))
        upcoming = trace[arrivals[next_arrival]].submit if next_arrival < len(arrivals) else float("inf")
        if not ends and upcoming == float("inf"):
            raise RuntimeError(f"{len(queue)} jobs can never start under this policy")
        if ends and ends[0][0] <= upcoming:
            now = ends[0][0]
            while ends and ends[0][0] == now:
                del leases[heapq.heappop(ends)[1]]
        else:
            now = upcoming
    return runs


def greedy_policy(queue: list[QueuedJob], gpus: list[GpuInfo], leased: set[str], running: int) -> list[Placement]:
    """Backfill without a reservation: whatever fits starts, in order (large jobs can starve)."""
    placed: list[Placement] = []
    taken = set(leased)
    for job in sorted(queue, key=lambda j: j.seq):
        got = place([job], gpus, taken, 0, MARGIN)
        placed += got
        taken |= {r for p in got for r in p.resources}
    return placed


def lower_bound(trace: Sequence[TraceJob], gpu_count: int) -> float:
    return max(sum(j.gpus * j.duration for j in trace) / gpu_count, max(j.duration for j in trace))


# ---- the real daemon ----


def run_daemon(trace: Sequence[TraceJob], workdir: Path, probes: int) -> tuple[dict[str, Run], list[float]]:
    """The trace through the real daemon, then `probes` lone submits to an idle machine for latency."""
    durations = {j.name: j.duration for j in trace}
    probe_spec = {**trace[0].spec, "gpus": 1}
    probe_spec.pop("deepspeed", None)
    for i in range(probes):
        durations[f"probe-{i:03d}"] = 0.05
    (workdir / "durations.json").write_text(json.dumps(durations))
    port = _free_port()
    env = {
        **os.environ,
        "FTQ_DATA_DIR": str(workdir / "ftq"),
        "FTQ_FAKE_GPUS": MACHINE,
        "FTQ_INPUT_DIRS": f"{workdir}{os.pathsep}{REPO}",
        "FTQ_WORKER_MODULE": "bench.hold_worker",
        "FTQ_MEMORY_MARGIN_GIB": str(MARGIN / GIB),
        "BENCH_TRACE": str(workdir / "durations.json"),
        "PYTHONPATH": str(REPO),
    }
    with (workdir / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        _wait(lambda: _healthy(http), 60)
        ids = [http.post("/jobs", json=job.spec).raise_for_status().json()["id"] for job in trace]
        _wait(lambda: _count(http, "succeeded") == len(ids), timeout=3600, interval=0.5)
        runs = _runs_from_daemon(http, ids)
        latencies = []
        for i in range(probes):
            job_id = http.post("/jobs", json={**probe_spec, "name": f"probe-{i:03d}"}).raise_for_status().json()["id"]
            _wait(lambda job_id=job_id: http.get(f"/jobs/{job_id}").json()["state"] == "succeeded", 60, 0.02)
            job = http.get(f"/jobs/{job_id}").json()
            start = http.get(f"/jobs/{job_id}/metrics", params={"kind": "start"}).json()["data"][0]
            latencies.append(_ts(start["timestamp"]) - _ts(job["submitted_at"]))
        return runs, latencies
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


def _count(http: httpx.Client, state: str) -> int:
    return int(http.get("/jobs", params={"state": state, "limit": 1}).json()["count"])


def _runs_from_daemon(http: httpx.Client, ids: list[int]) -> dict[str, Run]:
    """Each job's start and end as its worker recorded them, from the first submit."""
    raw = {}
    for job_id in ids:
        job = http.get(f"/jobs/{job_id}").json()
        records = http.get(f"/jobs/{job_id}/metrics").json()["data"]
        raw[job["name"]] = (
            _ts(job["submitted_at"]),
            _ts(records[0]["timestamp"]),
            _ts(records[-1]["timestamp"]),
            tuple(job["attempts"][0]["resources"]),
        )
    origin = min(submitted for submitted, *_ in raw.values())
    return {name: Run(start - origin, end - origin, res) for name, (_, start, end, res) in raw.items()}


# ---- helpers ----


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _wait(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(interval)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def placement_pass_ms(jobs: int = 10_000, gpu_count: int = 64, repeat: int = 20) -> tuple[float, float]:
    """Median and worst time of one `plan` pass over a big, varied queue on a busy 64-GPU machine
    (NVLink islands of 8, as in HGX boxes), topology included."""
    rng = random.Random(1)
    probe = FakeProbe(f"{gpu_count // 2}x80GiB,{gpu_count // 2}x40GiB@nvlink8/system")
    gpus, topology = probe.snapshot(), probe.topology()
    leased = {g.uuid for g in gpus[: gpu_count - 6]}  # a busy machine: six GPUs free
    queue = [
        QueuedJob(i, rng.choice([0, 0, 0, 1]), i, rng.choice([1, 1, 1, 2, 4, 8]), rng.randrange(4, 75) * GIB)
        for i in range(jobs)
    ]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        plan(queue, gpus, leased, 0, MARGIN, topology)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    parser.add_argument("--probes", type=int, default=40, help="lone submits timed on an idle machine")
    parser.add_argument("--no-daemon", action="store_true", help="simulation and placement pass only")
    parser.add_argument("--load", type=float, default=0.95, help="offered load of the arrivals scenario")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ftq-bench-"))
    try:
        model_dirs = {}
        for config in CONFIGS.glob("*.json"):
            target = workdir / "models" / config.stem
            target.mkdir(parents=True)
            shutil.copy(config, target / "config.json")
            model_dirs[config.stem] = target
        ds_path = workdir / "ds_z3.json"
        ds_path.write_text(json.dumps(Z3))
        trace = make_trace(args.jobs, args.seed, args.scale, model_dirs, ds_path)
        gpus = FakeProbe(MACHINE).snapshot()
        bound = lower_bound(trace, len(gpus))
        print(
            f"trace: {len(trace)} jobs, {statistics.mean(j.gpus for j in trace):.2f} GPUs a job on average, "
            f"{sum(j.gpus * j.duration for j in trace):.0f} GPU-seconds; machine {MACHINE}; "
            f"lower bound {bound:.1f} s\n"
        )
        rows = []
        for label, policy in (
            ("ftq (simulated)", ftq_policy),
            ("strict FIFO (simulated)", fifo_policy),
            ("one at a time (simulated)", serial_policy),
            ("backfill, no reservation (simulated)", greedy_policy),
        ):
            rows.append(_row(label, simulate(trace, policy, gpus), bound, trace, gpus, None))
        if not args.no_daemon:
            runs, latencies = run_daemon(trace, workdir, args.probes)
            rows.append(_row("ftq (real daemon)", runs, bound, trace, gpus, latencies))
        _print_table(rows)
        ftq, fifo, serial = (float(r[2]) for r in rows[:3])
        print(f"\nmakespan ratio, strict FIFO / ftq: {fifo / ftq:.2f}x; one at a time / ftq: {serial / ftq:.2f}x")
        median, worst = placement_pass_ms()
        print(f"one placement pass, 10,000 queued jobs x 64 GPUs: median {median:.1f} ms, worst {worst:.1f} ms")
        stream = with_arrivals(trace, args.load, len(gpus), args.seed)
        print(f"\nthe same jobs arriving one by one at {args.load:.0%} load (simulated): waits from submit to start")
        _print_stream(
            [
                (label, simulate(stream, policy, gpus))
                for label, policy in (
                    ("ftq", ftq_policy),
                    ("strict FIFO", fifo_policy),
                    ("backfill, no reservation", greedy_policy),
                )
            ],
            stream,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _row(
    label: str,
    runs: dict[str, Run],
    bound: float,
    trace: Sequence[TraceJob],
    gpus: list[GpuInfo],
    latencies: list[float] | None,
) -> tuple[str, ...]:
    multi = [runs[j.name].start - j.submit for j in trace if j.gpus > 1]
    span = makespan(runs)
    lat = f"{1000 * percentile(latencies, 50):.0f} / {1000 * percentile(latencies, 99):.0f} ms" if latencies else "-"
    return (
        label,
        f"{span:.1f} s",
        f"{span / bound:.3f}",
        f"{100 * idle_fit_share(trace, runs, gpus):.2f}%",
        lat,
        f"{max(multi):.1f} s" if multi else "-",
    )


def _print_stream(results: list[tuple[str, dict[str, Run]]], trace: Sequence[TraceJob]) -> None:
    header = ("policy", "1-GPU p50 / p99", "multi-GPU p50 / p99", "longest multi-GPU wait", "makespan")
    rows = [header]
    for label, runs in results:
        single = [runs[j.name].start - j.submit for j in trace if j.gpus == 1]
        multi = [runs[j.name].start - j.submit for j in trace if j.gpus > 1]
        rows.append(
            (
                label,
                f"{percentile(single, 50):.1f} / {percentile(single, 99):.1f} s",
                f"{percentile(multi, 50):.1f} / {percentile(multi, 99):.1f} s",
                f"{max(multi):.1f} s",
                f"{makespan(runs):.1f} s",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def _print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("policy", "makespan", "/ bound", "idle, fitting job waits", "submit->start p50/p99", "max multi-GPU wait")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
