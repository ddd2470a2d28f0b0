"""The service layer: what each route asks of the jobs, one function each."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlmodel import Session, select

from scheduler.policy.placement import QueuedJob, cpu_slot_names
from scheduler.policy.retry import memory_settings
from scheduler.policy.states import ACTIVE, JobState
from scheduler.policy.wait_reasons import explain_wait
from server.db import queries
from server.db.engine import read_snapshot
from server.db.event_log import add_state_event
from server.db.models import (
    AttemptPublic,
    Job,
    JobPublic,
    JobsPublic,
    JobSummary,
    Lease,
    Progress,
    as_utc,
    utcnow,
)
from server.db.transitions import current_attempt, transition
from server.services import downsample
from server.services.admission import admission_errors, assess, remote_code_errors, requirement_errors
from server.services.errors import Conflict, NotFound
from server.services.machine import Machine, MachineSource, machine_of
from server.services.notes import spec_notes
from server.services.paths import check_spec_inputs
from server.services.stall import DEFAULT_RULE, StallRule, stalled_for_s
from server.services.submission import check_submission
from server.settings import Settings
from worker.spec.job import JobSpec
from worker.spec.units import GIB


def submit(session: Session, raw: dict[str, Any], settings: Settings, machine: Machine) -> Job:
    """Check everything, report every problem at once (server.services.submission), and queue the job only when all is
    well."""
    checked = check_submission(raw, settings.input_dirs, settings.writable_dirs, machine, settings.allow_remote_code)
    resolved, assessment = checked.spec, checked.assessment
    job = Job(
        name=resolved.name,
        state=JobState.QUEUED.value,
        priority=resolved.priority,
        gpus=resolved.gpus,
        spec=resolved.model_dump(mode="json", exclude_none=True),
        need_bytes=assessment.need_bytes or None,
        estimate=assessment.estimate,
        gpu_ids=resolved.gpu_ids,
    )
    session.add(job)
    session.flush()  # the id, for the `queued` event committed with the job
    assert job.id is not None
    add_state_event(session, job.id)
    session.commit()
    session.refresh(job)
    return job


def estimate(spec: JobSpec, settings: Settings, machine: Machine) -> dict[str, Any]:
    """POST /estimate: the breakdown, whether and where it fits now, and what would make it fit."""
    resolved, files = check_spec_inputs(spec, settings.input_dirs, output_roots=settings.writable_dirs)
    assessment = assess(
        resolved, machine.gpus, set(machine.holders), machine.margin_bytes, machine.topology, files=files
    )
    fits_now = assessment.fits_now
    return {
        "estimate": assessment.estimate,
        "per_gpu_gib": round(assessment.need_bytes / GIB, 2),
        "margin_gib": round(machine.margin_bytes / GIB, 2),
        "gpus": resolved.gpus,
        "largest_offer_gib": round(assessment.largest_offer / GIB, 2) if assessment.largest_offer else None,
        "fits_ever": assessment.fits_ever,
        "fits_now": {"cuda_visible_devices": fits_now.cuda_visible_devices, "gpus": list(fits_now.resources)}
        if fits_now
        else None,
        "problems": remote_code_errors(resolved.trust_remote_code, settings.allow_remote_code)
        + requirement_errors(resolved, files.model_config)
        + admission_errors(resolved, assessment, machine.gpus, machine.cpu_slots),
        "suggestions": assessment.suggestions,
    }


def list_jobs(
    session: Session,
    state: JobState | None,
    offset: int,
    limit: int,
    machine: MachineSource,
    stall: StallRule = DEFAULT_RULE,
    newest: bool = False,
) -> JobsPublic:
    """A page of jobs in one statement however long it is (each with its latest attempt and metric), and the count;
    the oldest first, or the newest with `newest`.

    The machine is read only when a queued job on the page needs a wait reason.
    """
    read_snapshot(session)  # the page, its count and the leases of its wait reasons, as of one moment
    rows, count = queries.job_page(session, state.value if state is not None else None, offset, limit, newest)
    waits: dict[Any, str | None] = {}
    summaries = [
        JobSummary.model_validate(
            _summary_fields(row, queries.latest_attempt(row), row.latest_metric, machine, waits, stall)
        )
        for row in rows
    ]
    return JobsPublic(data=summaries, count=count, offset=offset, limit=limit)


def waiting_reason(job: Any, machine: MachineSource, memo: dict[Any, str | None] | None = None) -> str | None:
    """Why a queued job (a Job or a row with its columns) waits; the machine is read only for a queued job.

    `memo` keeps the answers of one machine by the job's shape: explain_wait reads what a job
    needs (GPUs, memory, pinned ids), not its place in the queue, and a page holds many alike.
    """
    if job.state != JobState.QUEUED.value:
        return None
    machine = machine_of(machine)
    if machine is None:
        return None
    if job.gpus == 0:
        held = sum(1 for r in machine.holders if r.startswith("cpu-"))
        return f"waiting for a CPU slot; {held} of {machine.cpu_slots} in use"
    assert job.id is not None
    gpu_ids = tuple(job.gpu_ids) if job.gpu_ids else None
    shape = (job.gpus, job.need_bytes or 0, gpu_ids)
    if memo is not None and shape in memo:
        return memo[shape]
    queued = QueuedJob(job.id, job.priority, job.id, job.gpus, job.need_bytes or 0, gpu_ids)
    reason = explain_wait(queued, machine.gpus, machine.holders, machine.margin_bytes)
    if memo is not None:
        memo[shape] = reason
    return reason


def _summary_fields(
    job: Any,
    attempt: Any,
    latest_metric: dict[str, Any] | None,
    machine: MachineSource,
    waits: dict[Any, str | None] | None = None,
    stall: StallRule = DEFAULT_RULE,
) -> dict[str, Any]:
    """A summary's fields from the job (a Job or a row), its latest attempt and its latest metric record."""
    live = attempt is not None and attempt.ended_at is None
    stalled = None
    if live and job.state == JobState.RUNNING.value:
        last = as_utc(attempt.last_record_at)
        stalled = stalled_for_s(utcnow(), last, attempt.record_interval_s, stall.factor, stall.min_s)
    progress = None
    if attempt is not None and attempt.last_step is not None:
        total = attempt.total_steps
        percentage = round(100 * attempt.last_step / total, 2) if total else None
        progress = Progress(current_steps=attempt.last_step, total_steps=total, percentage=percentage)
    return {
        **{name: getattr(job, name) for name in _SUMMARY_JOB_FIELDS},
        "bound_resources": attempt.resources if live else [],
        "cuda_visible_devices": attempt.cuda_visible_devices if attempt is not None else None,
        "progress": progress,
        "loss": latest_metric.get("loss") if latest_metric else None,
        "waiting": waiting_reason(job, machine, waits),
        "need_gib": round(job.need_bytes / GIB, 2) if job.need_bytes else None,
        "stalled_for_s": stalled,
    }


_SUMMARY_JOB_FIELDS = [name for name in JobSummary.model_fields if name in Job.model_fields]


def no_such_job(job_id: int) -> NotFound:
    return NotFound(f"job {job_id} does not exist; GET /jobs lists the jobs")


def describe_job(
    session: Session,
    job_id: int,
    machine: MachineSource = None,
    stall: StallRule = DEFAULT_RULE,
) -> JobPublic:
    """GET /jobs/{id}: the whole job in three statements, all as of one moment (its row read as columns)."""
    read_snapshot(session)
    job = queries.job(session, job_id)
    if job is None:
        raise no_such_job(job_id)
    return describe(session, job, machine, stall)


def describe(
    session: Session,
    job: Any,
    machine: MachineSource = None,
    stall: StallRule = DEFAULT_RULE,
) -> JobPublic:
    """The whole job (a Job, or a row of its columns): its attempts and its latest records, two statements."""
    assert job.id is not None
    attempts = queries.attempts(session, job.id)
    latest = queries.latest_records(session, job.id)
    metric, eval_, end = (latest.get(kind) for kind in queries.LATEST_KINDS)
    newest = max((r for r in (metric, eval_) if r is not None), key=lambda r: r[0], default=None)
    current = SimpleNamespace(**attempts[-1]) if attempts else None
    wall = (job.ended_at - job.started_at).total_seconds() if job.ended_at and job.started_at else None
    return JobPublic.model_validate(
        {
            **_summary_fields(job, current, metric[1] if metric else None, machine, stall=stall),
            "spec": job.spec,
            "estimate": job.estimate,
            "attempts": [AttemptPublic.model_validate(a) for a in attempts],
            "latest_metrics": newest[1] if newest else None,
            "final_loss": end[1].get("final_loss") if end else None,
            "result": end[1].get("result") if end and end[1].get("status") == "succeeded" else None,
            "notes": spec_notes(job.spec),
            "wall_time_s": round(wall, 2) if wall is not None else None,
        }
    )


def cancel(session: Session, job: Job) -> Job:
    """queued: cancelled at once; starting / running: cancelling, and the scheduler stops the worker.

    The scheduler may move the job between our read and our write (queued -> starting),
    so a compare-and-set that loses re-reads the state and decides again.
    """
    assert job.id is not None
    for _ in range(5):
        session.refresh(job)
        state = JobState(job.state)
        if state == JobState.CANCELLING:
            return job
        if state == JobState.QUEUED:
            done = transition(
                session,
                job.id,
                JobState.CANCELLED,
                JobState.QUEUED,
                ended_at=utcnow(),
                reason="cancelled on request before it started",
            )
        elif state in ACTIVE:
            done = transition(session, job.id, JobState.CANCELLING, state)
        else:
            raise Conflict(f"job {job.id} is {job.state}; only a queued, starting or running job can be cancelled")
        session.commit()
        if done:
            session.refresh(job)
            return job
    raise Conflict(f"job {job.id} kept changing state; try the cancel again")


def metrics(
    session: Session,
    job_id: int,
    since: int | None,
    kind: str | None,
    limit: int,
    superseded: bool = False,
    points: int | None = None,
) -> list[dict[str, Any]]:
    """The job's records in the order they were written; without `superseded`, each step once.

    With `points`: every record, each curve thinned to at most that many (server.services.downsample): first
    the ids with the values the curves are drawn by (not the records), then the records kept. Records written
    between the count and the read join the last bucket.
    """
    where = queries.record_filter(job_id, since, kind, superseded)
    if points is None:
        return queries.records(session, where, limit)
    counts = queries.record_counts(session, where)
    kept = downsample.thin(queries.record_values(session, where, downsample.CURVES), counts, points)
    return queries.records_by_id(session, kept)


REQUEUEABLE = (JobState.FAILED, JobState.OOM, JobState.CANCELLED)


def requeue(
    session: Session,
    job: Job,
    overrides: dict[str, Any],
    settings: Settings,
    machine: Machine,
) -> Job:
    """A new attempt for a failed / oom / cancelled job, resuming from its last checkpoint."""
    assert job.id is not None
    read = JobState(job.state)
    if read not in REQUEUEABLE:
        raise Conflict(f"job {job.id} is {job.state}; only a failed, oom or cancelled job can be requeued")
    merged = {**job.spec, **overrides}
    if overrides.get("gpu_ids") and "gpus" not in overrides:
        merged["gpus"] = len(overrides["gpu_ids"])
    if "gpus" in overrides and "gpu_ids" not in overrides:
        merged.pop("gpu_ids", None)  # a new GPU count unpins the job
    # Checked as a submit is: the daemon may have been restarted with other settings since (remote code,
    # output dirs), and the files the spec names may have changed.
    checked = check_submission(merged, settings.input_dirs, settings.writable_dirs, machine, settings.allow_remote_code)
    resolved, assessment = checked.spec, checked.assessment
    need = assessment.need_bytes
    last = current_attempt(session, job.id)
    if last is not None and last.ended_at is None:  # never two live attempts of one job
        raise Conflict(f"job {job.id} still has a live attempt ({last.number}); wait for it to end")
    ran = memory_settings(last.settings or {}) if last is not None else None  # without the auto_micro_batch note
    if last is not None and ran == memory_settings(resolved.model_dump()) and last.peak_memory_gib:
        need = max(need, int(last.peak_memory_gib * GIB))  # the same settings needed at least that much
    changed = ", ".join(f"{k}: {v}" for k, v in overrides.items()) or "unchanged settings"
    done = transition(
        session,
        job.id,
        JobState.QUEUED,
        read,
        spec=resolved.model_dump(mode="json", exclude_none=True),
        need_bytes=need or None,
        estimate=assessment.estimate,
        gpu_ids=resolved.gpu_ids,
        ended_at=None,
        reason=f"requeued on request with {changed}",
        # A person chose these settings: automatic OOM retries start afresh from them. What was tried is
        # kept, so no retry repeats settings that already ran out of memory.
        oom_retries=0,
        node_retries=0,
    )
    session.commit()
    session.refresh(job)
    if not done:
        raise Conflict(f"job {job.id} is {job.state}; only a failed, oom or cancelled job can be requeued")
    return job


def leases_by_resource(session: Session) -> dict[str, int]:
    return {lease.resource: lease.job_id for lease in session.exec(select(Lease)).all()}


def cpu_slot_holders(session: Session, cpu_slots: int) -> dict[str, int]:
    held = leases_by_resource(session)
    return {slot: held[slot] for slot in cpu_slot_names(cpu_slots) if slot in held}
