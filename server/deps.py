"""Dependencies the routes share: the session, the settings, the job by id, the machine.

The token is checked before any of these, in `server.guard` (FastAPI reads the body before dependencies run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlmodel import Session

from server.errors import NotFound
from server.jobs import leases_by_resource
from server.machine import Machine
from server.models import Job
from server.settings import Settings


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


INT64_MAX = (1 << 63) - 1  # SQLite's INTEGER: ids, steps and offsets beyond it cannot be stored or compared

JobIdPath = Annotated[int, Path(ge=1, le=INT64_MAX, description="The job's id, as POST /jobs returned it.")]


def get_job_or_404(job_id: JobIdPath, session: SessionDep) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist; GET /jobs lists the jobs")
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
