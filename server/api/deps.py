"""Dependencies the routes share: the session, the settings, the job by id, the machine, the scheduling loop.

The token is checked before any of these, in `server.api.guard` (FastAPI reads the body before dependencies run).
The ones that do no I/O are `async def`: FastAPI runs a plain `def` dependency in a
thread of its own, a hop per dependency per request that costs more than these do.
The ones that query the database stay plain functions, so that no query ever runs on
the event loop and no connection is checked out there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlmodel import Session

from server.db.engine import request_session
from server.db.models import Job
from server.services.jobs import leases_by_resource, no_such_job
from server.services.loop import Loop
from server.services.machine import LazyMachine, Machine
from server.settings import Settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    # A session connects at its first query, in the thread that runs it; closing one only returns its connection.
    with request_session(request.app.state.engine) as session:  # its writes wait for a lock only seconds
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_loop(request: Request) -> Loop:
    """The scheduling loop, as a protocol (server.services.loop): routes wake it and ask it, never import it."""
    return request.app.state.loop


LoopDep = Annotated[Loop, Depends(get_loop)]


INT64_MAX = (1 << 63) - 1  # SQLite's INTEGER: ids, steps and offsets beyond it cannot be stored or compared

JobIdPath = Annotated[int, Path(ge=1, le=INT64_MAX, description="The job's id, as POST /jobs returned it.")]


def get_job_or_404(job_id: JobIdPath, session: SessionDep) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise no_such_job(job_id)
    return job


JobDep = Annotated[Job, Depends(get_job_or_404)]


def get_machine(request: Request, session: SessionDep, settings: SettingsDep) -> Machine:
    """The GPUs as the probe sees them now, and who holds what, for admission and wait reasons."""
    probe = request.app.state.probe
    topology = probe.topology()
    return Machine(
        gpus=probe.snapshot(),
        holders=leases_by_resource(session),
        cpu_slots=settings.cpu_slots,
        margin_bytes=settings.memory_margin_bytes,
        topology=topology,
    )


MachineDep = Annotated[Machine, Depends(get_machine)]


async def get_lazy_machine(request: Request, session: SessionDep, settings: SettingsDep) -> LazyMachine:
    """The machine for wait reasons, read on first use only (a queued job asks), once a request.

    The GPUs are the probe's last snapshot while it is at most a tick old (the loop takes one
    each pass it places GPU jobs; the probe is a RecentProbe), and the machine is valid until
    then; the leases are read in the request's own session, so they agree with its jobs.
    """
    probe = request.app.state.probe

    def load() -> tuple[Machine, float | None]:
        taken_at, gpus = probe.recent_snapshot()
        machine = Machine(
            gpus=gpus,
            holders=leases_by_resource(session),
            cpu_slots=settings.cpu_slots,
            margin_bytes=settings.memory_margin_bytes,
            topology=probe.recent_topology(),
        )
        return machine, taken_at + probe.max_age_s

    return LazyMachine(load)


LazyMachineDep = Annotated[LazyMachine, Depends(get_lazy_machine)]
