"""The GPU check of the Ray executor: a one-node Ray cluster on this machine's real GPUs (part of `make gpu-check`).

A real Ray head (ray.cluster_utils.Cluster, no fake-GPU label, so its node agent reads NVML), a real daemon
pointed at it (FTQ_RAY_ADDRESS), and the demo's customer-service jobs (configs/jobs/*.yaml) placed through the
agent. It prints /gpus as the daemon sees it (the node, NVML's readings) while the jobs run, each job's node
and CUDA_VISIBLE_DEVICES, and PASS when every job succeeded on the node's GPUs and /gpus showed NVML
readings under that node.

    python -m bench.gpu_check_ray [--keep DIR]

Needs CUDA, NVML and Ray (`pip install '.[ray]'`); it says so and exits 2 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server.cli.demo import JOBS_DIR, free_port, start_daemon, wait_healthy
from server.cli.main import Client, load_spec

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the daemon's data and log here")
    args = parser.parse_args()
    if importlib.util.find_spec("ray") is None:
        print("needs Ray: pip install '.[ray]'", file=sys.stderr)
        return 2
    from scheduler.gpus.nvml import NvmlProbe

    try:
        gpus = NvmlProbe().snapshot()
    except Exception as exc:
        print(f"needs NVML and a GPU: {exc}", file=sys.stderr)
        return 2
    if not gpus:
        print("needs a GPU: NVML sees none", file=sys.stderr)
        return 2
    import ray
    from ray.cluster_utils import Cluster

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ftq-gpu-check-ray-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8, "num_gpus": len(gpus)})
    ray.shutdown()  # the daemon is the driver
    os.environ.update(
        FTQ_DATA_DIR=str(workdir / "ftq"),
        FTQ_RAY_ADDRESS=cluster.address,
        FTQ_INPUT_DIRS=str(REPO),
    )
    os.environ.pop("FTQ_FAKE_GPUS", None)
    port = free_port()
    log_path = workdir / "ftq" / "daemon.log"
    daemon = start_daemon(port, log_path)
    client = Client(f"http://127.0.0.1:{port}")
    ok = True
    try:
        wait_healthy(client, daemon, log_path, timeout=180)
        ids = [client.request("POST", "/jobs", json=load_spec(p, []))["id"] for p in sorted(JOBS_DIR.glob("*.yaml"))]
        seen_running = False
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline:
            jobs = [client.request("GET", f"/jobs/{i}") for i in ids]
            if not seen_running and any(j["state"] == "running" for j in jobs):
                seen_running = True
                ok &= show_gpus(client.request("GET", "/gpus"))
            if all(j["state"] in ("succeeded", "failed", "oom", "cancelled") for j in jobs):
                break
            time.sleep(1)
        print(f"\n{'job':<6} {'name':<12} {'state':<10} {'node':<10} {'CUDA_VISIBLE_DEVICES':<22} reason")
        for job in jobs:
            attempt = (job.get("attempts") or [{}])[-1]
            print(
                f"{job['id']:<6} {job['name']:<12} {job['state']:<10} {(attempt.get('node') or '')[:8]:<10} "
                f"{attempt.get('cuda_visible_devices') or '':<22} {job.get('reason') or ''}"
            )
            ok &= job["state"] == "succeeded" and bool(attempt.get("node"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        cluster.shutdown()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nPASS" if ok else "\nFAIL", "- the demo jobs through a one-node Ray cluster on this machine's GPUs")
    return 0 if ok else 1


def show_gpus(view: dict[str, Any]) -> bool:
    """Print /gpus; True when every GPU is under a usable node with NVML's readings."""
    print(f"/gpus while the jobs run: {view['probe']}")
    for node in view.get("nodes", []):
        print(f"  node {node['node'][:8]} {node.get('address')} {node['state']} {node.get('probe')}")
    for gpu in view["gpus"]:
        used = (gpu["memory_used"] or 0) / 2**30
        total = (gpu["memory_total"] or 0) / 2**30
        print(
            f"  node {gpu['node'][:8]} GPU {gpu['index']} {gpu['name']}: {used:.1f} / {total:.1f} GiB, "
            f"util {gpu['utilization']}%, job {gpu['bound_job']}"
        )
    usable = {n["node"] for n in view.get("nodes", []) if n["state"] == "usable"}
    return bool(view["gpus"]) and all(g["node"] in usable and g["memory_total"] for g in view["gpus"])


if __name__ == "__main__":
    sys.exit(main())
