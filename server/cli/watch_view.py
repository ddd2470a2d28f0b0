"""What `ftq watch` shows of each job, as plain data, and how: a rich table for a terminal, a line otherwise.

Pure: a job's summary (GET /jobs) and its latest metric record (from the event stream, or
GET /jobs/{id}'s latest_metrics) in, a WatchRow out; the renderers only format rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from server.cli.tables import fmt_duration, fmt_loss, fmt_number, where_ran, why
from worker.spec.records import hms_seconds

STATE_STYLES = {
    "queued": "yellow",
    "starting": "cyan",
    "running": "bold cyan",
    "cancelling": "magenta",
    "succeeded": "green",
    "failed": "bold red",
    "oom": "bold red",
    "cancelled": "magenta",
}


@dataclass(frozen=True)
class WatchRow:
    id: int
    name: str
    state: str
    gpus: str
    step: int | None
    total: int | None
    percent: float | None
    eta_s: float | None
    loss: float | None
    tokens_per_s: float | None
    why: str

    def key(self) -> tuple[Any, ...]:
        """What makes a new line in the non-terminal output: state, step, loss, and why it waits."""
        return (self.state, self.step, self.total, self.loss, self.why)


def eta_s(
    record: dict[str, Any] | None,
    record_age_s: float,
    step: int | None,
    total: int | None,
    running_for_s: float | None,
) -> float | None:
    """The time left: the record's remaining_time less the time since it came; else the pace since the job
    started over the steps left; None when neither is known."""
    remaining = hms_seconds((record or {}).get("remaining_time"))
    if remaining is not None:
        return max(remaining - record_age_s, 0.0)
    if step and total and running_for_s is not None and step <= total:
        return running_for_s / step * (total - step)
    return None


def watch_row(
    job: dict[str, Any], record: dict[str, Any] | None, record_age_s: float, running_for_s: float | None
) -> WatchRow:
    """A job's line of the watch. `record`: its latest metric record; `running_for_s`: since it started."""
    progress = job.get("progress") or {}
    step, total = progress.get("current_steps"), progress.get("total_steps")
    if record and isinstance(record.get("current_steps"), int) and (step is None or record["current_steps"] > step):
        step, total = record["current_steps"], record.get("total_steps") or total
    percent = 100.0 * step / total if step is not None and total else None
    live = job["state"] in ("starting", "running")
    loss = job.get("loss")
    if loss is None and record:
        loss = record.get("loss")
    return WatchRow(
        id=job["id"],
        name=job["name"],
        state=job["state"],
        gpus=where_ran(job.get("cuda_visible_devices")) if job["state"] != "queued" else "-",
        step=step,
        total=total,
        percent=100.0 if job["state"] == "succeeded" else percent,
        eta_s=eta_s(record, record_age_s, step, total, running_for_s) if live else None,
        loss=loss,
        tokens_per_s=(record or {}).get("throughput") if live else None,
        why=why(job),
    )


def fmt_percent(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.0f}%"


def change_line(row: WatchRow, clock: str) -> str:
    """One line per change, for a log file or a pipe: time, job, name, state, step/total, loss."""
    step = "-" if row.step is None else f"{row.step}/{row.total or '?'}"
    parts = [clock, f"job {row.id}", row.name, row.state, step, f"loss {fmt_loss(row.loss)}"]
    if row.percent is not None and row.state in ("starting", "running"):
        parts.append(fmt_percent(row.percent))
    if row.eta_s is not None:
        parts.append(f"ETA {fmt_duration(row.eta_s)}")
    if row.why:
        parts.append(row.why)
    return "  ".join(parts)


def watch_table(rows: list[WatchRow], title: str, status: str | None) -> Group:
    """The terminal view: a header, the daemon's status when it is unreachable, the jobs with their bars."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "STATE", "GPU", "PROGRESS", "%", "STEP", "ETA", "LOSS", "TOK/S", "WHY"):
        table.add_column(column, no_wrap=column != "WHY", justify="right" if column in ("%", "TOK/S") else "left")
    for row in rows:
        bar = ProgressBar(total=100.0, completed=row.percent or 0.0, width=24, pulse=row.state == "starting")
        step = "-" if row.step is None else f"{row.step}/{row.total or '?'}"
        table.add_row(
            str(row.id),
            row.name,
            Text(row.state, style=STATE_STYLES.get(row.state, "")),
            row.gpus,
            bar,
            fmt_percent(row.percent),
            step,
            fmt_duration(row.eta_s),
            fmt_loss(row.loss),
            fmt_number(row.tokens_per_s, 0),
            Text(row.why[:80], style="dim"),
        )
    parts: list[Any] = [Text(title, style="bold")]
    if status:
        parts.append(Text(status, style="bold red"))
    parts.append(table)
    return Group(*parts)
