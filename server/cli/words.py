"""The CLI's sentences: a job's status, an estimate, an event, each in words."""

from __future__ import annotations

from typing import Any

from server.cli.sse import SseEvent
from server.cli.tables import fmt_loss, fmt_number


def gpus_words(cuda_visible_devices: str | None, gpus: int) -> str:
    if cuda_visible_devices == "":
        return "a CPU slot"
    if cuda_visible_devices:
        return f"GPU {cuda_visible_devices}" if "," not in cuda_visible_devices else f"GPUs {cuda_visible_devices}"
    return "a CPU slot" if gpus == 0 else f"{gpus} GPU(s)"


def progress_words(progress: dict[str, Any] | None) -> str:
    if not progress:
        return "no step yet"
    total = progress.get("total_steps")
    pct = progress.get("percentage")
    return f"step {progress['current_steps']}/{total or '?'}" + (f" ({pct:.0f}%)" if pct is not None else "")


def attempt_words(attempt: dict[str, Any]) -> str:
    words = f"{attempt['number']}: {attempt['state']}"
    if attempt.get("last_step") is not None:
        words += f" at step {attempt['last_step']}"
    if attempt.get("reason") and attempt["reason"] != attempt["state"]:
        words += f" ({attempt['reason']})"
    return words


def status_text(job: dict[str, Any]) -> str:
    """`ftq status ID`: what a person asks of a job, in a few lines."""
    state = job["state"]
    running = state in ("starting", "running", "cancelling")
    where = gpus_words(job.get("cuda_visible_devices"), job.get("gpus", 0))
    head = f"job {job['id']} ({job['name']}): {state}"
    if running or job.get("attempts"):
        head += f" on {where}" if running else f", ran on {where}"
    lines = [head, f"  progress: {progress_words(job.get('progress'))}, loss {fmt_loss(job.get('loss'))}"]
    if job.get("waiting"):
        lines.append(f"  waiting: {job['waiting']}")
    if job.get("reason") and state != "succeeded":
        lines.append(f"  reason: {job['reason']}")
    if job.get("stalled_for_s"):
        lines.append(f"  stalled? no record for {job['stalled_for_s']:.0f} s")
    attempts = job.get("attempts") or []
    if attempts:
        lines.append(f"  attempts: {len(attempts)} ({'; '.join(attempt_words(a) for a in attempts)})")
    if job.get("wall_time_s") is not None:
        lines.append(f"  wall time: {job['wall_time_s']:.1f} s")
    if job.get("result"):
        lines.append(f"  result: {job['result']}")
    lines.append("  (`ftq status --json ID` gives the whole record)")
    return "\n".join(lines)


def estimate_text(answer: dict[str, Any]) -> str:
    """POST /estimate's answer in words: the need, where it fits, what would make it fit."""
    gpus = answer.get("gpus", 0)
    if gpus == 0:
        lines = ["The job runs on a CPU slot: it needs no GPU memory."]
    elif not answer.get("per_gpu_gib"):
        lines = [f"The job asks for {gpus} GPU(s); its memory could not be estimated (the model's config is unread)."]
    else:
        lines = [
            f"The job needs about {answer['per_gpu_gib']:.1f} GiB on each of {gpus} GPU(s) "
            f"(estimate, plus a margin of {answer.get('margin_gib', 0):.1f} GiB)."
        ]
    fits_now = answer.get("fits_now")
    if fits_now:
        lines.append(f"It fits now on CUDA_VISIBLE_DEVICES={fits_now['cuda_visible_devices']}.")
    elif gpus and answer.get("fits_ever", True):
        offer = answer.get("largest_offer_gib")
        lines.append(
            "It does not fit now, but it will once other jobs free their GPUs"
            + (f" (the best {gpus} GPU(s) free now offer {offer:.1f} GiB each)." if offer is not None else ".")
        )
    elif gpus:
        offer = answer.get("largest_offer_gib")
        lines.append(
            "It can never fit on this machine"
            + (f": its best {gpus} GPU(s) have {offer:.1f} GiB each." if offer is not None else ".")
        )
    for problem in answer.get("problems") or []:
        lines.append(f"Problem: {problem['field']}: {problem['message']}")
    suggestions = answer.get("suggestions") or []
    if suggestions:
        lines.append("It would fit with:")
        lines += [f"  - {s}" for s in suggestions]
    return "\n".join(lines)


def record_words(record: dict[str, Any]) -> str:
    parts = []
    if record.get("current_steps") is not None:
        parts.append(f"step {record['current_steps']}/{record.get('total_steps') or '?'}")
    for key, label in (("loss", "loss"), ("eval_loss", "eval loss")):
        if record.get(key) is not None:
            parts.append(f"{label} {fmt_loss(record[key])}")
    if record.get("throughput") is not None:
        parts.append(f"{fmt_number(record['throughput'], 0)} tok/s")
    if record.get("remaining_time"):
        parts.append(f"ETA {record['remaining_time']}")
    for key in ("status", "path", "result", "error"):
        if record.get(key):
            parts.append(f"{key} {record[key]}")
    return ", ".join(parts)


def event_line(event: SseEvent) -> str:
    """One event of GET /events or GET /jobs/{id}/events as a line: id, kind, job, what happened."""
    data = event.data if isinstance(event.data, dict) else {"text": event.data}
    head = f"#{event.id}" if event.id is not None else ""
    job = f"job {data['job_id']}" if data.get("job_id") is not None else ""
    if event.event == "state":
        reason = f" ({data['reason']})" if data.get("reason") and data["reason"] != data.get("state") else ""
        return _words(head, data.get("at"), job, f"{data.get('name', '')}: {data.get('state')}{reason}")
    if event.event in ("start", "metric", "eval", "checkpoint", "end"):
        record = data.get("record") or {}
        at = record.get("timestamp") or record.get("ts") or ""
        attempt = f" attempt {data['attempt']}" if data.get("attempt") is not None else ""
        return _words(head, at, f"{job}{attempt}", f"{event.event}: {record_words(record)}")
    if event.event == "gpus":
        gpus = ", ".join(
            f"{g['index']}: {fmt_number((g.get('memory_used') or 0) / 2**30)}/"
            f"{fmt_number((g.get('memory_total') or 0) / 2**30)} GiB "
            + (f"job {g['bound_job']}" if g.get("bound_job") else "free")
            for g in data.get("gpus", [])
        )
        return _words(head, data.get("at"), f"gpus: {gpus or 'none'}")
    if event.event == "alert":
        return _words(head, data.get("at"), f"ALERT {data.get('alert')}: {data.get('message', '')}")
    return _words(head, f"{event.event}: {data}")


def _words(*parts: Any) -> str:
    return " ".join(str(part) for part in parts if part)
