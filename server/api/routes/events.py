"""The event streams: GET /jobs/{id}/events and GET /events (Server-Sent Events, sse-starlette).

No session dependency here: a stream lasts as long as its client, and a session held for it would keep a
pooled connection from the API's other requests. The reads it needs run briefly in a thread.

A client that stops reading is disconnected after FTQ_SEND_TIMEOUT_S (by the edge, server/http_edge.py, which
frees its socket and buffers; sse-starlette's send_timeout is the backstop), and resumes with Last-Event-ID
losing nothing: what it holds of the daemon meanwhile is bounded by `writes`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from sqlmodel import Session
from sse_starlette import EventSourceResponse

from server.api.deps import INT64_MAX, JobIdPath
from server.api.openapi import ANY, error_responses
from server.db.event_log import (
    MACHINE_KINDS,
    RECORD_KINDS,
    TERMINAL_STATES,
    LoggedEvent,
    events_after,
    job_state,
    newest_id,
)
from server.live.event_hub import EventHub
from server.services.errors import InvalidSpec, field_error
from server.services.jobs import no_such_job

router = APIRouter(tags=["events"])

WRITE_BYTES = 16 * 1024  # a write to one client at most (see writes)

EVENT = {  # one message of the stream, as SSE parsers (schemathesis's too) read it
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's id: send it as Last-Event-ID."},
        "event": {"type": "string", "enum": ["state", *sorted(RECORD_KINDS), *sorted(MACHINE_KINDS)]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"type": "object"},
            "description": "state: job_id, name, state, reason, at; a record: job_id, attempt, record; "
            "gpus: gpus (as GET /gpus), at; alert: alert, job_id, gpu, message, at.",
        },
    },
}
STREAM = {
    "description": "Server-Sent Events, each with an `id:`, an `event:` and a JSON `data:`; `: ping` comments "
    "between them (FTQ_SSE_PING_S).",
    "content": {"text/event-stream": {"schema": EVENT}},
}
AfterQuery = Annotated[
    int | None,
    Query(ge=0, le=INT64_MAX, description="only events with a larger id (as the Last-Event-ID header does)"),
]
LastEventId = Annotated[str | None, Header(description="resume after this event id (browsers send it on reconnect)")]


def cursor_of(after: int | None, last_event_id: str | None) -> int | None:
    """Where a stream resumes: `?after=` or the Last-Event-ID header (a 422 naming it when it is no id)."""
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isdigit() or int(text) > INT64_MAX:
            problem = field_error(
                "header.last-event-id",
                f"{text[:40]!r} is not an event id; send the `id:` of the last event received, or leave it out",
            )
            raise InvalidSpec(f"invalid request — {problem['field']}: {problem['message']}", [problem])
        return max(int(text), after or 0)
    return after


def backstop(settings: Any) -> float:
    """sse-starlette's send timeout: later than FTQ_SEND_TIMEOUT_S, at which the edge (server/http_edge.py)
    aborts a connection that takes no data and the stream ends quietly; this one (which ends it with a
    traceback) holds where the app runs without that edge, e.g. under plain uvicorn."""
    return float(settings.send_timeout_s) * 2


def writes(events: Sequence[LoggedEvent]) -> Iterator[bytes]:
    """The events as a few writes of at most WRITE_BYTES each (an event larger than that goes alone): with many
    clients the sends, not the events, are what costs the daemon, and a write is what a client that has stopped
    reading holds of its memory, beside its write buffer (16 KiB, server/http_edge.py), until FTQ_SEND_TIMEOUT_S
    closes it."""
    batch: list[bytes] = []
    size = 0
    for event in events:
        wire = event.wire
        if batch and size + len(wire) > WRITE_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
        batch.append(wire)
        size += len(wire)
    if batch:
        yield b"".join(batch)


async def job_stream(hub: EventHub, engine: Any, job_id: int, cursor: int) -> AsyncIterator[bytes]:
    """One job's events after `cursor`; it ends after the job's terminal state, unless more of the job follows
    (an OOM retry queues the job again in the same transaction)."""
    while True:
        found, cursor = await hub.after(cursor, job_id)
        for i, event in enumerate(found):
            if event.ends_job and not any(e.kind == "state" for e in found[i + 1 :]):
                if await hub.read(_state, engine, job_id) in TERMINAL_STATES:
                    for chunk in writes(found[: i + 1]):
                        yield chunk
                    return
        for chunk in writes(found):
            yield chunk


async def all_stream(hub: EventHub, cursor: int) -> AsyncIterator[bytes]:
    while True:
        found, cursor = await hub.after(cursor)
        for chunk in writes(found):
            yield chunk


def _state(engine: Any, job_id: int) -> str | None:
    with Session(engine) as session:
        return job_state(session, job_id)


def _opening(engine: Any, job_id: int, cursor: int) -> tuple[str | None, bool, int]:
    """The job's state, whether it has events after the cursor (a 404, a stream, or nothing more to say), and the
    cursor the stream starts from: one past the newest event is no id this daemon gave (another data dir's, or
    made up), and its events to come are all after what the client has seen: it starts from the newest. Left
    as it was, the stream would wait for ids above it while the job's own end went by below: it would never end."""
    with Session(engine) as session:
        cursor = min(cursor, newest_id(session))
        return job_state(session, job_id), bool(events_after(session, cursor, job_id, limit=1)), cursor


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: STREAM,
        204: {"description": "The job has ended and every event of it was sent: no reconnecting."},
        **error_responses(*ANY, 404, 422),
    },
)
async def job_events(
    job_id: JobIdPath, request: Request, after: AfterQuery = None, last_event_id: LastEventId = None
) -> Response:
    """One job's state changes and records, live. Without a cursor, its whole history first; the stream ends
    after the job's terminal state, and a reconnect after that answers 204 (browsers stop reconnecting)."""
    cursor = cursor_of(after, last_event_id) or 0
    engine, settings = request.app.state.engine, request.app.state.settings
    state, more, cursor = await request.app.state.events.read(_opening, engine, job_id, cursor)
    if state is None:
        raise no_such_job(job_id)
    if state in TERMINAL_STATES and not more:
        return Response(status_code=204)
    stream = job_stream(request.app.state.events, engine, job_id, cursor)
    return EventSourceResponse(stream, ping=settings.sse_ping_s, send_timeout=backstop(settings))


@router.get("/events", response_class=EventSourceResponse, responses={200: STREAM, **error_responses(*ANY, 422)})
async def all_events(request: Request, after: AfterQuery = None, last_event_id: LastEventId = None) -> Response:
    """Every job's events, GPU snapshots and alerts, live; with a cursor, first everything after it."""
    hub: EventHub = request.app.state.events
    cursor = cursor_of(after, last_event_id)
    # A cursor past the newest event starts from it (see _opening); every id a client was sent is the hub's.
    start = hub.newest if cursor is None else min(cursor, hub.newest)
    settings = request.app.state.settings
    return EventSourceResponse(all_stream(hub, start), ping=settings.sse_ping_s, send_timeout=backstop(settings))
