"""ftq on a Ray cluster: submit -> worker-start latency, and one placement pass at cluster scale.

    .venv/bin/python -m bench.ray [--probes 30] [--nodes 2]

In one run, on one machine:
1. A real Ray cluster (ray.cluster_utils.Cluster: a head and `--nodes` worker nodes, each with two fake GPUs
   from its `ftq.fake_gpus` label, and Ray's dashboard, which Ray Jobs needs).
2. Lone submits, one at a time to an idle machine, timed from the job's submit to its worker's first record:
   through ftq's local executor (FTQ_FAKE_GPUS, the same four GPUs on this machine), through ftq on the
   Ray cluster (FTQ_RAY_ADDRESS, the workers started by the node agents), and through Ray Jobs' own
   `JobSubmissionClient.submit_job` on the same cluster (from the call to the entrypoint's first line).
   The workers are the benchmarks' stand-in (bench.hold_worker): they start, write their records and end, so
   what is timed is the way to a running process, not training.
3. One placement pass of ftq's planner at 100,000 queued jobs over 64 nodes x 8 GPUs (bench.ray_placement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.schedule import _free_port, _healthy, _ts, _wait, percentile
from server.cli.demo import start_daemon

REPO = Path(__file__).resolve().parent.parent
LABEL = "ftq.fake_gpus"
NODE_GPUS = "2x24GiB"
SPEC: dict[str, Any] = {
    "model_name_or_path": str(REPO / "configs/models/tiny-chat"),
    "dataset": "customer_service",
    "dataset_dir": str(REPO / "configs/data"),
    "template": "qwen",
    "finetuning_type": "lora",
    "max_steps": 1,
    "gpus": 1,
}


def start_cluster(nodes: int) -> Any:
    """A head (no GPUs, the dashboard for Ray Jobs) and `nodes` nodes with two fake GPUs each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": True, "object_store_memory": 200 << 20},
    )
    for _ in range(nodes):
        cluster.add_node(num_cpus=2, object_store_memory=100 << 20, labels={LABEL: NODE_GPUS})
    cluster.wait_for_nodes()
    return cluster


def ftq_latencies(workdir: Path, extra_env: dict[str, str], probes: int) -> list[float]:
    """A real daemon; `probes` lone submits, each waited for; seconds from submit to the worker's `start`."""
    workdir.mkdir(parents=True)
    names = [f"probe-{i:03d}" for i in range(probes + 1)]  # the first warms up, and is not counted
    Path(os.environ["BENCH_TRACE"]).write_text(json.dumps({name: 0.05 for name in names}))
    port = _free_port()
    env = {
        **os.environ,
        "FTQ_DATA_DIR": str(workdir / "ftq"),
        "FTQ_INPUT_DIRS": f"{workdir}{os.pathsep}{REPO}",
        "FTQ_WORKER_MODULE": "bench.hold_worker",
        **extra_env,
    }
    daemon = start_daemon(port, workdir / "daemon.log", env)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        _wait(lambda: _healthy(http), 120)
        latencies = []
        for name in names:
            job_id = http.post("/jobs", json={**SPEC, "name": name}).raise_for_status().json()["id"]
            _wait(lambda job_id=job_id: http.get(f"/jobs/{job_id}").json()["state"] == "succeeded", 120, 0.02)
            job = http.get(f"/jobs/{job_id}").json()
            start = http.get(f"/jobs/{job_id}/metrics", params={"kind": "start"}).json()["data"][0]
            latencies.append(_ts(start["timestamp"]) - _ts(job["submitted_at"]))
        return latencies[1:]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


def ray_jobs_latencies(dashboard_url: str, workdir: Path, probes: int) -> list[float]:
    """Ray Jobs on the same cluster: seconds from submit_job() to the entrypoint's first line."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    workdir.mkdir(parents=True)
    latencies = []
    for i in range(probes + 1):
        stamp = workdir / f"started-{i}"
        entrypoint = f"{sys.executable} -m bench.started_at {stamp}"
        sent = time.time()
        job = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        _wait(lambda job=job: client.get_job_status(job) in (JobStatus.SUCCEEDED, JobStatus.FAILED), 120, 0.02)
        if client.get_job_status(job) != JobStatus.SUCCEEDED:
            raise RuntimeError(f"Ray job {job} failed: {client.get_job_logs(job)[-2000:]}")
        latencies.append(float(stamp.read_text()) - sent)
    return latencies[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=30, help="lone submits timed for each way")
    parser.add_argument("--nodes", type=int, default=2, help="Ray worker nodes, two fake GPUs each")
    parser.add_argument("--keep", type=Path, help="keep the daemons' data and logs here")
    args = parser.parse_args()
    import ray

    from bench.ray_placement import print_table

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ftq-bench-ray-"))
    # What the workers need, in the environment the Ray nodes start with (their agents' workers inherit it):
    # the repo, for bench.hold_worker, and the durations it holds for.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    os.environ["BENCH_TRACE"] = str(workdir / "durations.json")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = start_cluster(args.nodes)
    try:
        # The daemon is the cluster's driver, not this process: disconnect what start_cluster connected.
        ray.shutdown()
        dashboard = "http://" + str(cluster.head_node.address_info["webui_url"])
        local = {"FTQ_FAKE_GPUS": "4x24GiB"}
        on_ray = {"FTQ_RAY_ADDRESS": cluster.address}
        rows = [
            ("ftq, local executor", ftq_latencies(workdir / "local", local, args.probes)),
            ("ftq on Ray (node agents)", ftq_latencies(workdir / "ray", on_ray, args.probes)),
            ("Ray Jobs submit_job", ray_jobs_latencies(dashboard, workdir / "ray-jobs", args.probes)),
        ]
    finally:
        cluster.shutdown()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(rows[0][1])
    print(f"\nsubmit -> worker start, {args.probes} lone submits each; a Ray cluster of {args.nodes} nodes here")
    print(f"{'how':<28} {'p50':>9} {'p99':>9} {'p50 / local':>12}")
    for label, values in rows:
        p50, p99 = statistics.median(values), percentile(values, 99)
        print(f"{label:<28} {p50 * 1000:>7.0f}ms {p99 * 1000:>7.0f}ms {p50 / base:>11.2f}x")
    print("\none placement pass (bench.ray_placement):")
    print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
