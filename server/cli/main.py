"""`ftq`: the daemon (`ftq serve`) and a client that talks to it over HTTP (FTQ_URL): argparse and dispatch.

The parts live in their own modules: server.cli.client (HTTP, errors), server.cli.jobfiles (job files),
server.cli.tables (tables), server.cli.words (sentences), server.cli.watch (the live view), server.cli.follow
(logs -f, events). The names other code imports from here (Client, watch, summary_table ...) stay importable.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.cli.client import TERMINAL, Client, CliError
from server.cli.follow import follow_logs, print_events
from server.cli.jobfiles import load_spec, parse_overrides
from server.cli.paths import absolute_paths
from server.cli.tables import (
    LIST_DEFAULT,
    compare_table,
    job_pages,
    jobs_table,
    page_footer,
    render_table,
    summary_table,
)
from server.cli.watch import watch
from server.cli.words import estimate_text, status_text

__all__ = ["TERMINAL", "Client", "CliError", "jobs_table", "load_spec", "main", "parse_overrides"]
__all__ += ["render_table", "summary_table", "watch"]


def version() -> str:
    try:
        return importlib.metadata.version("ftq")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: `pip install -e .`)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftq", description="Run many LLM fine-tunes at once on a machine's GPUs.")
    p.add_argument("--version", action="version", version=f"ftq {version()}", help="print ftq's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the daemon (settings from FTQ_* variables)")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback --host without FTQ_API_TOKEN (only where no one untrusted can reach it)",
    )
    submit = sub.add_parser("submit", help="submit job files (LLaMA-Factory YAML or JSON)")
    submit.add_argument("files", nargs="+", type=Path, help="job files, as written for llamafactory-cli")
    _overrides(submit)
    lst = sub.add_parser(
        "list",
        help="the jobs, a line each, the newest first (the last 50 unless --limit or --all), and how many there are",
    )
    lst.add_argument("--state", help="only jobs in this state (queued, running, succeeded ...)")
    lst.add_argument("--limit", type=int, default=LIST_DEFAULT, help=f"show at most this many (default {LIST_DEFAULT})")
    lst.add_argument("--offset", type=int, default=0, help="skip this many of the newest first (the next page)")
    lst.add_argument("--all", action="store_true", help="every job, however many (read a page at a time)")
    status = sub.add_parser("status", help="one job in a few lines: state, reason, GPUs, progress, attempts, result")
    status.add_argument("job_id", type=int, help="the job's id")
    status.add_argument("--json", action="store_true", help="the whole record, as GET /jobs/{id} gives it")
    w = sub.add_parser("watch", help="the jobs live, with progress bars and ETAs, until they have all ended")
    w.add_argument("job_ids", nargs="*", type=int, help="the jobs to watch (default: those queued or running)")
    w.add_argument("--interval", type=float, default=5.0, help="re-read the jobs at least this often, in s (5)")
    logs = sub.add_parser("logs", help="a job's worker log (-f: follow it until the job ends)")
    logs.add_argument("job_id", type=int, help="the job's id")
    logs.add_argument("--tail", type=int, default=200, help="the last this many lines (default 200)")
    logs.add_argument("-f", "--follow", action="store_true", help="print the whole log, then what comes, until the end")
    events = sub.add_parser("events", help="the event stream as lines: one job's (history, then live) or all")
    events.add_argument("job_id", type=int, nargs="?", help="one job's events, ending with its end (default: all)")
    events.add_argument("--json", action="store_true", help="raw JSON lines: {id, event, data}")
    events.add_argument("--after", type=int, help="only events after this id (as Last-Event-ID)")
    compare = sub.add_parser("compare", help="jobs side by side: loss, eval loss, tokens/s, VRAM, GPU-hours, result")
    compare.add_argument("job_ids", nargs="+", type=int, help="the jobs to compare (at most 100)")
    compare.add_argument("--json", action="store_true", help="GET /compare's answer as it is")
    estimate = sub.add_parser(
        "estimate",
        help="what a job file would need, where it would fit, what would help (exit 1: it would be refused)",
    )
    estimate.add_argument("file", type=Path, help="a job file (LLaMA-Factory YAML or JSON)")
    estimate.add_argument("--json", action="store_true", help="POST /estimate's answer as it is")
    _overrides(estimate)
    cancel = sub.add_parser("cancel", help="cancel jobs")
    cancel.add_argument("job_ids", nargs="+", type=int, help="the jobs' ids")
    requeue = sub.add_parser("requeue", help="requeue a failed / oom / cancelled job, resuming from its checkpoint")
    requeue.add_argument("job_id", type=int, help="the job's id")
    _overrides(requeue, "a setting to change (batch size, cutoff_len, gpus ...), e.g. --set gpus=2")
    sub.add_parser("gpus", help="the GPUs and who holds them")
    demo = sub.add_parser("demo", help="start a daemon, run the shipped customer-service jobs, report")
    demo.add_argument("--jobs", nargs="*", type=Path, default=None, help="job files (default: configs/jobs/*.yaml)")
    return p


def _overrides(p: argparse.ArgumentParser, text: str = "override a key of the file, e.g. --set gpus=0") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text)


def _submit(client: Client, args: argparse.Namespace) -> None:
    for path in args.files:
        spec = absolute_paths(load_spec(path, args.overrides), Path.cwd())
        job = client.request("POST", "/jobs", json=spec)
        print(f"submitted job {job['id']} ({job['name']}) from {path}")
        for note in job.get("notes", []):
            print(f"  note: {note}")
    print(f"follow them with `ftq watch`, or open {client.dashboard()}")


def _status(client: Client, args: argparse.Namespace) -> None:
    job = client.request("GET", f"/jobs/{args.job_id}")
    print(json.dumps(job, indent=2) if args.json else status_text(job))


def _watch(client: Client, args: argparse.Namespace) -> None:
    jobs = watch(client, args.job_ids or None, interval_s=args.interval)
    if jobs:
        print("\n" + summary_table(client, jobs))
    print(f"dashboard: {client.dashboard()}")


def _logs(client: Client, args: argparse.Namespace) -> None:
    if args.follow:
        follow_logs(client, args.job_id)
    else:
        print(client.request("GET", f"/jobs/{args.job_id}/logs", params={"tail": args.tail}), end="")


def _events(client: Client, args: argparse.Namespace) -> None:
    print_events(client, args.job_id, args.json, args.after)


def _compare(client: Client, args: argparse.Namespace) -> None:
    answer = client.request("GET", "/compare", params={"ids": args.job_ids})
    print(json.dumps(answer, indent=2) if args.json else compare_table(answer["data"]))


def _estimate(client: Client, args: argparse.Namespace) -> None:
    spec = absolute_paths(load_spec(args.file, args.overrides), Path.cwd())
    answer = client.request("POST", "/estimate", json=spec)
    print(json.dumps(answer, indent=2) if args.json else estimate_text(answer))
    if answer.get("problems"):
        sys.exit(1)  # for scripts: the job would be refused as it is


def _list(client: Client, args: argparse.Namespace) -> None:
    if args.limit < 1 or args.offset < 0:
        sys.exit("ftq: --limit must be at least 1 and --offset at least 0")
    fetch = lambda params: client.request("GET", "/jobs", params=params)  # noqa: E731
    jobs, count = job_pages(fetch, args.state, args.offset, None if args.all else args.limit)
    if jobs:
        print(jobs_table(jobs))
    print(page_footer(count, args.offset, len(jobs), args.state))


def _cancel(client: Client, args: argparse.Namespace) -> None:
    for job_id in args.job_ids:
        job = client.request("POST", f"/jobs/{job_id}/cancel")
        print(f"job {job_id}: {job['state']}")


def _requeue(client: Client, args: argparse.Namespace) -> None:
    job = client.request("POST", f"/jobs/{args.job_id}/requeue", json=parse_overrides(args.overrides))
    print(f"job {args.job_id}: {job['state']} ({job['reason']})")


def _gpus(client: Client, args: argparse.Namespace) -> None:
    info = client.request("GET", "/gpus")
    print(f"probe: {info['probe']}")
    for node in info.get("nodes", []):  # a Ray cluster's nodes: their GPUs below are named NODE/INDEX
        problem = f": {node['problem']}" if node.get("problem") else ""
        print(f"  node {node['node'][:8]}  {node.get('address') or '?'}  {node['state']}{problem}")
    for gpu in info["gpus"]:
        free = gpu["memory_free"] / 2**30 if gpu["memory_free"] is not None else float("nan")
        total = gpu["memory_total"] / 2**30 if gpu["memory_total"] is not None else float("nan")
        holder = f"job {gpu['bound_job']}" if gpu["bound_job"] else "free"
        health = "" if gpu["healthy"] else f"  UNHEALTHY: {gpu['error']}"
        where = f"{gpu['node'][:8]}/" if gpu.get("node") else ""
        print(f"  {where}{gpu['index']}  {gpu['name']}  {free:.1f}/{total:.1f} GiB free  {holder}{health}")
    print(f"CPU slots: {info['cpu_slots']}, bound: {info['cpu_slots_bound'] or 'none'}")


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Any]] = {
    "submit": _submit,
    "list": _list,
    "status": _status,
    "watch": _watch,
    "logs": _logs,
    "events": _events,
    "compare": _compare,
    "estimate": _estimate,
    "cancel": _cancel,
    "requeue": _requeue,
    "gpus": _gpus,
}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "serve":
        from server.serve import serve as run_daemon

        run_daemon(args.host, args.port, insecure=args.insecure)
        return
    if args.command == "demo":
        from server.cli.demo import run_demo

        sys.exit(run_demo(args.jobs))
    try:
        COMMANDS[args.command](Client(), args)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `ftq events | head`
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    main()
