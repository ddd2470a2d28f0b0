"""The CLI's plain-text tables: the jobs (`ftq list`), their outcome (after `ftq watch`), a comparison."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.cli.client import Client


def fmt_loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def fmt_number(value: Any, digits: int = 1, unit: str = "") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def fmt_duration(seconds: float | None) -> str:
    """A duration as people read it: 42s, 4m05s, 3h12m; '-' when unknown."""
    if seconds is None:
        return "-"
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def where_ran(cuda_visible_devices: str | None) -> str:
    """The GPUs an attempt saw ('0,1'), 'cpu' for a CPU slot, '-' before any attempt; a job across Ray nodes
    shows each node by the first 8 characters of its id ('3f9a07c2:0,1;b81e0d44:0,1')."""
    if cuda_visible_devices == "":
        return "cpu"
    if not cuda_visible_devices:
        return "-"
    shares = [part.partition(":") for part in cuda_visible_devices.split(";")]
    return ";".join(f"{node[:8]}:{indices}" if sep else node for node, sep, indices in shares)


LIST_DEFAULT = 50  # `ftq list`'s lines without --limit: a screenful, the newest
PAGE = 1000  # GET /jobs's most jobs an answer


def job_pages(
    fetch: Callable[[dict[str, Any]], dict[str, Any]], state: str | None, offset: int, limit: int | None
) -> tuple[list[dict[str, Any]], int]:
    """The newest jobs after the first `offset` (`limit` of them; all with None), read a page of GET /jobs at a
    time through `fetch`, and how many jobs there are. A job submitted while the pages are read moves the rest
    down by one: the job pushed onto the next page is listed once all the same."""
    jobs: dict[int, dict[str, Any]] = {}
    at, count = offset, 0
    while limit is None or len(jobs) < limit:
        size = PAGE if limit is None else min(PAGE, limit - len(jobs))
        page = fetch({"order": "newest", "offset": at, "limit": size, **({"state": state} if state else {})})
        count = page["count"]
        for job in page["data"]:
            jobs.setdefault(job["id"], job)
        at += len(page["data"])
        if len(page["data"]) < size:
            break
    return sorted(jobs.values(), key=lambda job: -job["id"]), count


def page_footer(count: int, offset: int, shown: int, state: str | None) -> str:
    """What `ftq list` says under its table: how many jobs there are, which of them it showed, how to see more."""
    what = f"{count:,} {state + ' ' if state else ''}job{'' if count == 1 else 's'}"
    if shown == 0:
        return f"{what}; none after --offset {offset}" if count else f"no {state + ' ' if state else ''}jobs"
    if shown >= count:
        return f"{what}, the newest first"
    more = f"; --offset {offset + shown} for the next, --all for every one" if offset + shown < count else ""
    return f"{what}, the newest first: showing {offset + 1:,}-{offset + shown:,}{more}"


def render_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def why(job: dict[str, Any]) -> str:
    """What a job's line says about it: stalled, why it waits, or why it ended (nothing once it succeeded)."""
    if job.get("stalled_for_s"):
        return f"stalled? no record for {job['stalled_for_s']:.0f} s"
    if job.get("state") == "succeeded":
        return ""
    return job.get("waiting") or job.get("reason") or ""


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    rows = [("ID", "NAME", "STATE", "GPU", "STEP", "LOSS", "REASON")]
    for job in jobs:
        progress = job.get("progress") or {}
        step = f"{progress.get('current_steps', 0)}/{progress.get('total_steps') or '?'}" if progress else "-"
        gpu = where_ran(job.get("cuda_visible_devices"))
        rows.append((str(job["id"]), job["name"], job["state"], gpu, step, fmt_loss(job.get("loss")), why(job)[:60]))
    return render_table(rows)


def summary_table(client: Client, jobs: list[dict[str, Any]]) -> str:
    """Each job's outcome: where it ran, its loss from first to last record, its wall time; then where each
    succeeded job's adapter or model is."""
    rows = [("ID", "NAME", "STATE", "GPUS", "STEPS", "LOSS FIRST -> LAST", "WALL TIME")]
    results = []
    for job in jobs:
        full = client.request("GET", f"/jobs/{job['id']}")
        attempt = (full.get("attempts") or [{}])[-1]
        steps = f"{attempt.get('last_step') or 0}/{attempt.get('total_steps') or '?'}"
        losses = client.request("GET", f"/jobs/{job['id']}/metrics", params={"kind": "metric"})["data"]
        loss = f"{fmt_loss(losses[0].get('loss'))} -> {fmt_loss(losses[-1].get('loss'))}" if losses else "-"
        wall = f"{full['wall_time_s']:.1f} s" if full.get("wall_time_s") is not None else "-"
        gpus = where_ran(attempt.get("cuda_visible_devices"))
        rows.append((str(job["id"]), job["name"], full["state"], gpus, steps, loss, wall))
        if full.get("result"):
            results.append(f"job {job['id']} ({job['name']}): result in {full['result']}")
    return "\n".join([render_table(rows), *results])


def compare_table(rows: list[dict[str, Any]]) -> str:
    """GET /compare's answer as a table, then where each succeeded job's result is."""
    table = [("ID", "NAME", "STATE", "LOSS", "EVAL LOSS", "STEPS", "TOK/S", "PEAK VRAM", "WALL", "GPU-H", "TRIES")]
    for row in rows:
        steps = "-" if row.get("steps") is None else f"{row['steps']}/{row.get('total_steps') or '?'}"
        table.append(
            (
                str(row["id"]),
                row["name"],
                row["state"],
                fmt_loss(row.get("final_loss")),
                fmt_loss(row.get("final_eval_loss")),
                steps,
                fmt_number(row.get("tokens_per_s"), 0),
                fmt_number(row.get("peak_vram_gib"), 1, " GiB"),
                fmt_duration(row.get("wall_time_s")),
                fmt_number(row.get("gpu_hours"), 2),
                str(row.get("attempts", 0)),
            )
        )
    results = [f"job {r['id']} ({r['name']}): result in {r['result']}" for r in rows if r.get("result")]
    return "\n".join([render_table(table), *results])
