"""Dependencies the routes share: the session, the settings, the job by id, the token check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from server.errors import NotFound, Unauthorized
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


def get_job_or_404(job_id: int, session: SessionDep) -> Job:
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


def require_token(request: Request) -> None:
    token = request.app.state.settings.api_token
    if token and request.headers.get("authorization") != f"Bearer {token}":
        raise Unauthorized("this daemon needs its API token: send 'Authorization: Bearer <FTQ_API_TOKEN>'")
