"""Routes for the machine: its GPUs and the daemon's health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.deps import LoopDep, MachineDep, SessionDep, SettingsDep
from server.api.openapi import ANY, JOB_EXAMPLES, error_responses
from server.db.models import GpusPublic, JobCreate
from server.services import jobs as service
from server.services.machine import cluster_nodes, gpus_view

router = APIRouter(tags=["system"])


@router.get("/gpus", response_model=GpusPublic, responses=error_responses(*ANY))
def get_gpus(
    request: Request, session: SessionDep, settings: SettingsDep, machine: MachineDep, loop: LoopDep
) -> GpusPublic:
    """Each GPU: memory, utilization, processes (foreign ones marked), links, and the job holding it."""
    probe = request.app.state.probe
    worker_pids = set(loop.live_pids().values())
    return GpusPublic(
        probe=probe.description,
        gpus=gpus_view(machine, worker_pids),
        cpu_slots=settings.cpu_slots,
        cpu_slots_bound=service.cpu_slot_holders(session, settings.cpu_slots),
        nodes=cluster_nodes(probe),
    )


@router.post("/estimate", responses=error_responses(*ANY, 403, 415, 422))
def estimate(
    spec: Annotated[JobCreate, Body(openapi_examples=JOB_EXAMPLES)], settings: SettingsDep, machine: MachineDep
) -> dict[str, Any]:
    """The memory estimate of a spec, where it would fit now, and what would make it fit."""
    return service.estimate(spec, settings, machine)


METRICS_RESPONSE = {
    "description": "Prometheus' text exposition format (version 0.0.4): jobs by state, per-job progress, loss, "
    "tokens/s, peak memory and stall figures, attempts by outcome, wait histograms, per-GPU memory and holder.",
    "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
}


@router.get("/metrics", response_class=Response, responses={200: METRICS_RESPONSE, **error_responses(*ANY)})
def prometheus_metrics(request: Request) -> Response:
    """Every figure for Prometheus, read from the database and the GPUs when it scrapes (server.metrics.prometheus)."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
