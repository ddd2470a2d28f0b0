"""`ftq`: the daemon (`ftq serve`) and a client that talks to it over HTTP (FTQ_URL)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from server.cli_paths import absolute_paths

TERMINAL = {"succeeded", "failed", "oom", "cancelled"}


class Client:
    """A thin HTTP client; errors come back as the daemon's own sentences."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("FTQ_URL") or "http://127.0.0.1:8000").rstrip("/")
        token = token or os.environ.get("FTQ_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise SystemExit(
                f"ftq: cannot reach the daemon at {self.url} ({exc}); start it with `ftq serve` or set FTQ_URL"
            ) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            lines = [f"ftq: {response.status_code}: {body.get('detail', body)}"]
            lines += [f"  - {e['field']}: {e['message']}" for e in body.get("errors", [])]
            raise SystemExit("\n".join(lines))
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text


def load_spec(path: Path, overrides: list[str]) -> dict[str, Any]:
    """A job file (YAML or JSON, as written for llamafactory-cli) with KEY=VALUE overrides applied."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"ftq: cannot read {path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise SystemExit(f"ftq: {path} must hold a mapping of keys to values")
    return {**spec, **parse_overrides(overrides)}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs, each value read as YAML (numbers, booleans, lists)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"ftq: --set {item!r}: expected KEY=VALUE, e.g. --set gpus=0")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _fmt_loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def render_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    rows = [("ID", "NAME", "STATE", "GPU", "STEP", "LOSS", "REASON")]
    for job in jobs:
        progress = job.get("progress") or {}
        step = f"{progress.get('current_steps', 0)}/{progress.get('total_steps') or '?'}" if progress else "-"
        where = job.get("cuda_visible_devices")
        gpu = "cpu" if where == "" else (where or "-")
        reason = job.get("reason") or ""
        if job["state"] == "succeeded":
            reason = ""
        if job.get("stalled_for_s"):
            reason = f"stalled? no record for {job['stalled_for_s']:.0f} s"
        rows.append((str(job["id"]), job["name"], job["state"], gpu, step, _fmt_loss(job.get("loss")), reason[:60]))
    return render_table(rows)


def watch(client: Client, ids: list[int] | None, interval: float = 1.0, out: Any = sys.stdout) -> list[dict[str, Any]]:
    """Show the jobs' table until every one of them has ended; return them."""
    tty = out.isatty()
    last, last_print = "", 0.0
    while True:
        jobs = client.request("GET", "/jobs", params={"limit": 1000})["data"]
        if ids:
            jobs = [j for j in jobs if j["id"] in ids]
        table = jobs_table(jobs)
        now = time.monotonic()
        if tty:
            out.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S  ftq jobs\n\n") + table + "\n")
        elif table != last and now - last_print >= 5 or all(j["state"] in TERMINAL for j in jobs):
            out.write(time.strftime("%H:%M:%S\n") + table + "\n\n")
            last_print = now
        out.flush()
        last = table
        if all(j["state"] in TERMINAL for j in jobs):
            return jobs
        time.sleep(interval)


def summary_table(client: Client, jobs: list[dict[str, Any]]) -> str:
    """Each job's outcome: where it ran, its loss from first to last record, its wall time; then where each
    succeeded job's adapter or model is."""
    rows = [("ID", "NAME", "STATE", "GPUS", "STEPS", "LOSS FIRST -> LAST", "WALL TIME")]
    results = []
    for job in jobs:
        full = client.request("GET", f"/jobs/{job['id']}")
        attempt = (full.get("attempts") or [{}])[-1]
        where = attempt.get("cuda_visible_devices")
        gpus = "cpu" if where == "" else (where or "-")
        steps = f"{attempt.get('last_step') or 0}/{attempt.get('total_steps') or '?'}"
        losses = client.request("GET", f"/jobs/{job['id']}/metrics", params={"kind": "metric"})["data"]
        loss = f"{_fmt_loss(losses[0].get('loss'))} -> {_fmt_loss(losses[-1].get('loss'))}" if losses else "-"
        wall = f"{full['wall_time_s']:.1f} s" if full.get("wall_time_s") is not None else "-"
        rows.append((str(job["id"]), job["name"], full["state"], gpus, steps, loss, wall))
        if full.get("result"):
            results.append(f"job {job['id']} ({job['name']}): result in {full['result']}")
    return "\n".join([render_table(rows), *results])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ftq", description="Run many LLM fine-tunes at once on a machine's GPUs.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon (settings from FTQ_* variables)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback --host without FTQ_API_TOKEN (only where no one untrusted can reach it)",
    )
    submit = sub.add_parser("submit", help="submit job files (LLaMA-Factory YAML or JSON)")
    submit.add_argument("files", nargs="+", type=Path)
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    lst = sub.add_parser("list", help="the jobs, a line each")
    lst.add_argument("--state")
    status = sub.add_parser("status", help="one job, whole (JSON)")
    status.add_argument("job_id", type=int)
    w = sub.add_parser("watch", help="a table that refreshes until the jobs end")
    w.add_argument("job_ids", nargs="*", type=int)
    logs = sub.add_parser("logs", help="a job's worker log")
    logs.add_argument("job_id", type=int)
    logs.add_argument("--tail", type=int, default=200)
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_ids", nargs="+", type=int)
    requeue = sub.add_parser("requeue", help="requeue a failed / oom / cancelled job, resuming from its checkpoint")
    requeue.add_argument("job_id", type=int)
    requeue.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("gpus", help="the GPUs and who holds them")
    demo = sub.add_parser("demo", help="start a daemon, run the shipped customer-service jobs, report")
    demo.add_argument("--jobs", nargs="*", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.command == "serve":
        from server.serve import serve as run_daemon

        run_daemon(args.host, args.port, insecure=args.insecure)
        return
    if args.command == "demo":
        from server.demo import run_demo

        sys.exit(run_demo(args.jobs))
    client = Client()
    if args.command == "submit":
        for path in args.files:
            spec = absolute_paths(load_spec(path, args.overrides), Path.cwd())
            job = client.request("POST", "/jobs", json=spec)
            print(f"submitted job {job['id']} ({job['name']}) from {path}")
            for note in job.get("notes", []):
                print(f"  note: {note}")
    elif args.command == "list":
        params = {"limit": 1000, **({"state": args.state} if args.state else {})}
        print(jobs_table(client.request("GET", "/jobs", params=params)["data"]))
    elif args.command == "status":
        print(json.dumps(client.request("GET", f"/jobs/{args.job_id}"), indent=2))
    elif args.command == "watch":
        jobs = watch(client, args.job_ids or None)
        print("\n" + summary_table(client, jobs))
    elif args.command == "logs":
        print(client.request("GET", f"/jobs/{args.job_id}/logs", params={"tail": args.tail}), end="")
    elif args.command == "cancel":
        for job_id in args.job_ids:
            job = client.request("POST", f"/jobs/{job_id}/cancel")
            print(f"job {job_id}: {job['state']}")
    elif args.command == "requeue":
        job = client.request("POST", f"/jobs/{args.job_id}/requeue", json=parse_overrides(args.overrides))
        print(f"job {args.job_id}: {job['state']} ({job['reason']})")
    elif args.command == "gpus":
        info = client.request("GET", "/gpus")
        print(f"probe: {info['probe']}")
        for gpu in info["gpus"]:
            free = gpu["memory_free"] / 2**30 if gpu["memory_free"] is not None else float("nan")
            total = gpu["memory_total"] / 2**30 if gpu["memory_total"] is not None else float("nan")
            holder = f"job {gpu['bound_job']}" if gpu["bound_job"] else "free"
            health = "" if gpu["healthy"] else f"  UNHEALTHY: {gpu['error']}"
            print(f"  {gpu['index']}  {gpu['name']}  {free:.1f}/{total:.1f} GiB free  {holder}{health}")
        print(f"CPU slots: {info['cpu_slots']}, bound: {info['cpu_slots_bound'] or 'none'}")


if __name__ == "__main__":
    main()
