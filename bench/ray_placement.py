"""How long one placement pass takes on a cluster: 100,000 queued jobs over 64 nodes x 8 GPUs.

    .venv/bin/python -m bench.ray_placement [--repeat 20]

The daemon runs `plan` on every loop step that has a queue, so one pass must stay well
under the step (the target: 50 ms). The cases, each timed over `repeat` passes:

1. 100,000 jobs over 64 nodes x 8 GPUs (32 nodes of 8x80GiB, 32 of 8x40GiB, NVSwitch
   inside a node), busy: 90% of the GPUs leased, as in steady state; the pass stops once
   no GPU is left to give and the reservation is taken;
2. the same, but a foreign process fills one free GPU so that no job fits it: the pass
   cannot stop early and walks all 100,000 jobs (the worst case of a busy cluster);
3. the same, idle: every GPU free (after a restart, or when a wave of jobs ends);
4. the same 512 GPUs on one node (node ""), busy, and without topology: a greedy
   closest-set over hundreds of candidates is what no real machine asks for;
5. today's single-node case (bench.schedule): 10,000 jobs on 64 GPUs, six free.

The queue: mostly 1-GPU jobs, some 2/4/8, a few 16-GPU gangs, a few pinned and CPU
jobs, priorities 0/1/5, each need a distinct estimate (as real estimates are), in id
order as the store hands it. The lead's bench/ray.py calls `placement_rows()`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace

from scheduler.gpus.fake import FakeProbe
from scheduler.gpus.types import GpuInfo
from scheduler.policy.placement import Plan, QueuedJob, plan
from worker.spec.units import GIB

TARGET_MS = 50.0
MARGIN = GIB
Topology = dict[tuple[str, str], int]


def cluster(nodes: int = 64, per_node: int = 8, one_node: bool = False) -> tuple[list[GpuInfo], Topology]:
    """`nodes` HGX-like nodes (half 80 GiB, half 40 GiB cards, NVSwitch inside), node-qualified as the
    cluster probe names them; `one_node`: the same GPUs as one machine's (node "", indices 0..n-1)."""
    gpus: list[GpuInfo] = []
    topology: Topology = {}
    for n in range(nodes):
        probe = FakeProbe(f"{per_node}x{80 if n < nodes // 2 else 40}GiB@nvlink")
        node = f"{n:02x}" + "c0ffee" * 9  # a Ray node id is 56 hex digits
        renamed = {}
        for g in probe.snapshot():
            if one_node:
                index = n * per_node + g.index
                renamed[g.uuid] = replace(g, uuid=f"GPU-{index:08d}", index=index)
            else:
                renamed[g.uuid] = replace(g, uuid=f"{node}/{g.uuid}", node=node)
        gpus += renamed.values()
        if not one_node:
            topology.update({(renamed[a].uuid, renamed[b].uuid): d for (a, b), d in probe.topology().items()})
    return gpus, topology


def queue(jobs: int, gpus_per_node: int = 8, seed: int = 1) -> list[QueuedJob]:
    rng = random.Random(seed)
    shapes, weights = [0, 1, 2, 4, 8, 16], [2, 70, 12, 8, 6, 2]
    out = []
    for i in range(jobs):
        n = rng.choices(shapes, weights)[0]
        need = 0 if n == 0 else rng.randrange(2 * GIB, 70 * GIB)
        pinned = (rng.randrange(gpus_per_node),) if n == 1 and rng.random() < 0.005 else None
        out.append(QueuedJob(i, rng.choice([0, 0, 0, 0, 0, 0, 1, 1, 1, 5]), i, n, need, pinned))
    return out


def busy(gpus: Sequence[GpuInfo], share: float, seed: int = 2) -> set[str]:
    rng = random.Random(seed)
    return {g.uuid for g in gpus if rng.random() < share} | {"cpu-0", "cpu-1"}


def foreign_filled(gpus: Sequence[GpuInfo], leased: set[str]) -> list[GpuInfo]:
    """The same GPUs, but a foreign process fills the last free one: no job fits it, so it never goes
    and a pass cannot stop early; it walks the whole queue."""
    last = max(i for i, g in enumerate(gpus) if g.uuid not in leased)
    return [replace(g, memory_free=GIB) if i == last else g for i, g in enumerate(gpus)]


def time_passes(
    jobs: list[QueuedJob], gpus: list[GpuInfo], leased: set[str], cpu_slots: int, topology: Topology | None, repeat: int
) -> tuple[list[float], list[float], Plan]:
    """Wall-clock and CPU ms of each pass: on a shared machine the CPU time is what the pass itself cost."""
    wall, cpu, result = [], [], Plan()
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = plan(jobs, gpus, leased, cpu_slots, MARGIN, topology)
        cpu.append((time.process_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    return wall, cpu, result


def today_case() -> tuple[list[QueuedJob], list[GpuInfo], set[str], Topology]:
    """bench.schedule.placement_pass_ms's situation: 10,000 jobs, 64 GPUs (NVLink islands of 8), six free."""
    rng = random.Random(1)
    probe = FakeProbe("32x80GiB,32x40GiB@nvlink8/system")
    gpus = probe.snapshot()
    jobs = [
        QueuedJob(i, rng.choice([0, 0, 0, 1]), i, rng.choice([1, 1, 1, 2, 4, 8]), rng.randrange(4, 75) * GIB)
        for i in range(10_000)
    ]
    return jobs, gpus, {g.uuid for g in gpus[:58]}, probe.topology()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def placement_rows(repeat: int = 20) -> list[tuple[str, float, float, float, float, int, bool]]:
    """Per case: (case, median ms, p99 ms, p99 / the 50 ms target, median CPU ms, jobs placed, reservation held)."""
    big = queue(100_000)
    nodes, topology = cluster()
    one, _ = cluster(one_node=True)
    leased = busy(nodes, 0.9)
    stuck = foreign_filled(nodes, leased)
    small_jobs, small_gpus, small_leased, small_topology = today_case()
    cases = [
        ("100k jobs, 64 nodes x 8 GPUs, 90% leased", big, nodes, leased, 8, topology),
        ("  the same, one free GPU filled by a foreign process", big, stuck, leased, 8, topology),
        ("  the same, every GPU free", big, nodes, {"cpu-0", "cpu-1"}, 8, topology),
        ("100k jobs, 512 GPUs on one node, 90% leased", big, one, busy(one, 0.9), 8, None),
        (
            "10k jobs, 64 GPUs on one node, 6 free (bench.schedule)",
            small_jobs,
            small_gpus,
            small_leased,
            0,
            small_topology,
        ),
    ]
    rows = []
    for label, jobs, gpus, held, slots, topo in cases:
        wall, cpu, result = time_passes(jobs, gpus, held, slots, topo, repeat)
        p99 = percentile(wall, 99)
        reserved = result.reserved_for is not None
        rows.append(
            (
                label,
                statistics.median(wall),
                p99,
                p99 / TARGET_MS,
                statistics.median(cpu),
                len(result.placements),
                reserved,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20, help="passes timed per case")
    print_table(parser.parse_args().repeat)


def print_table(repeat: int = 20) -> None:
    """The placement table (bench.ray prints it after its latencies)."""
    header = ("case", "median", "p99", f"p99 / {TARGET_MS:.0f} ms", "CPU median", "placed", "reservation")
    lines = [header] + [
        (label, f"{med:.1f} ms", f"{p99:.1f} ms", f"{ratio:.2f}", f"{cpu:.1f} ms", str(placed), "held" if held else "-")
        for label, med, p99, ratio, cpu, placed, held in placement_rows(repeat)
    ]
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    for r in lines:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
