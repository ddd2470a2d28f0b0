"""Routes for jobs: parse, call one service function, return."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import PlainTextResponse

from server.api.deps import (
    INT64_MAX,
    JobDep,
    JobIdPath,
    LazyMachineDep,
    LoopDep,
    MachineDep,
    SessionDep,
    SettingsDep,
)
from server.api.openapi import ANY, JOB_EXAMPLES, WRITE, error_responses, links_to_job
from server.db.models import JobPublic, JobsPublic, MetricsPublic, RequeueRequest
from server.services import jobs as service
from server.services import logs as log_service
from server.services.downsample import MIN_POINTS
from server.services.jobs import JobState  # the states GET /jobs?state= takes, as the service names them
from server.services.stall import StallRule

router = APIRouter(prefix="/jobs", tags=["jobs"])

ON_A_JOB = (*ANY, 404, 422)
MetricKind = Literal["start", "metric", "eval", "checkpoint", "end", "invalid"]  # invalid: lines kept raw, with why
JobOrder = Literal["oldest", "newest"]
POINTS_MAX = 20_000


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    responses={**error_responses(*ANY, *WRITE, 422), 201: {"description": "The job, queued.", "links": links_to_job()}},
)
def submit_job(
    # Read as a plain object and checked whole by the service (server.services.submission), so that a bad key and a
    # missing model directory come in one answer; the document still shows the spec's schema (server.api.openapi).
    spec: Annotated[dict[str, Any], Body(openapi_examples=JOB_EXAMPLES)],
    session: SessionDep,
    settings: SettingsDep,
    machine: MachineDep,
    loop: LoopDep,
) -> JobPublic:
    job = service.submit(session, spec, settings, machine)
    loop.wake()
    return service.describe(session, job, machine)


@router.get("", response_model=JobsPublic, responses=error_responses(*ANY, 422))
async def list_jobs(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    machine: LazyMachineDep,
    state: JobState | None = None,
    offset: int = Query(default=0, ge=0, le=INT64_MAX),
    limit: int = Query(default=100, ge=1, le=1000),
    order: Annotated[
        JobOrder,
        Query(
            description="`oldest` first (by id, the default: a page stays put while jobs are submitted) or "
            "`newest` first (what the dashboard, `ftq list` and `ftq watch` show); `count` is every job matched"
        ),
    ] = "oldest",
) -> Response:
    # Polled: the answer is kept while the database has not changed (server.api.read_cache);
    # a read runs in a thread.
    newest = order == "newest"
    return await request.app.state.reads.answer(
        ("jobs", state, offset, limit, order),
        lambda: service.list_jobs(session, state, offset, limit, machine, StallRule.of(settings), newest),
        machine,
    )


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses={**error_responses(*ON_A_JOB), 200: {"description": "The job.", "links": links_to_job()}},
)
async def get_job(
    job_id: JobIdPath, request: Request, session: SessionDep, settings: SettingsDep, machine: LazyMachineDep
) -> Response:
    return await request.app.state.reads.answer(
        ("job", job_id), lambda: service.describe_job(session, job_id, machine, StallRule.of(settings)), machine
    )


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={
        **error_responses(*ON_A_JOB, *WRITE, 409),
        200: {"description": "The job, cancelling or cancelled.", "links": links_to_job()},
    },
)
def cancel_job(job: JobDep, session: SessionDep, loop: LoopDep) -> JobPublic:
    job = service.cancel(session, job)
    loop.wake()
    return service.describe(session, job)


@router.post(
    "/{job_id}/requeue",
    response_model=JobPublic,
    responses={
        **error_responses(*ON_A_JOB, *WRITE, 409),
        200: {"description": "The job, queued again.", "links": links_to_job()},
    },
)
def requeue_job(
    job: JobDep,
    session: SessionDep,
    settings: SettingsDep,
    machine: MachineDep,
    loop: LoopDep,
    overrides: RequeueRequest | None = None,
) -> JobPublic:
    changes = overrides.model_dump(exclude_unset=True) if overrides else {}
    job = service.requeue(session, job, changes, settings, machine)
    loop.wake()
    return service.describe(session, job, machine)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=error_responses(*ON_A_JOB))
def get_metrics(
    job: JobDep,
    session: SessionDep,
    since: int | None = Query(default=None, ge=-1, le=INT64_MAX, description="only records after this step"),
    kind: Annotated[MetricKind | None, Query(description="only records of this kind")] = None,
    limit: int = Query(default=10_000, ge=1, le=100_000),
    superseded: bool = Query(default=False, description="also the records of steps a later attempt trained again"),
    points: int | None = Query(
        default=None,
        ge=MIN_POINTS,
        le=POINTS_MAX,
        description="instead of the first `limit` records: every record, the loss and eval-loss curves each "
        "thinned to at most this many (the first, the last, and each bucket's lowest and highest), other kinds whole",
    ),
) -> MetricsPublic:
    assert job.id is not None
    data = service.metrics(session, job.id, since, kind, limit, superseded, points)
    return MetricsPublic(data=data, count=len(data))


LOG_HEADERS = {
    "X-Log-Offset": {"description": "With ?offset=: the offset to ask from next.", "schema": {"type": "integer"}},
    "X-Log-Attempt": {"description": "With ?offset=: the attempt whose log this is.", "schema": {"type": "integer"}},
}


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={
        **error_responses(*ON_A_JOB),
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "headers": LOG_HEADERS},
    },
)
def get_logs(
    job: JobDep,
    session: SessionDep,
    tail: int = Query(default=200, ge=1, le=100_000),
    attempt: int | None = Query(default=None, ge=1, le=INT64_MAX, description="attempt number; the latest by default"),
    offset: int | None = Query(
        default=None,
        ge=0,
        le=INT64_MAX,
        description="instead of the last `tail` lines: the bytes after this byte offset (at most 1 MiB), the "
        "next offset in X-Log-Offset; an offset past the end starts again from 0 (`ftq logs -f` follows so)",
    ),
) -> Response:
    if offset is None:
        return PlainTextResponse(log_service.logs(session, job, tail, attempt))
    chunk = log_service.log_after(session, job, offset, attempt)
    headers = {"X-Log-Offset": str(chunk.offset)}
    if chunk.attempt is not None:
        headers["X-Log-Attempt"] = str(chunk.attempt)
    return Response(chunk.data, media_type="text/plain; charset=utf-8", headers=headers)
