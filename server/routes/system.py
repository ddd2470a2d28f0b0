"""Routes for the machine: its GPUs and the daemon's health."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request

from server import jobs as service
from server.deps import SessionDep, SettingsDep
from server.models import GpuPublic, GpusPublic

router = APIRouter(tags=["system"])


@router.get("/gpus", response_model=GpusPublic)
def get_gpus(request: Request, session: SessionDep, settings: SettingsDep) -> GpusPublic:
    probe = request.app.state.probe
    held = service.leases_by_resource(session)
    gpus = [
        GpuPublic(
            **{k: v for k, v in asdict(gpu).items() if k not in ("processes", "pci_bus_id")},
            processes=[asdict(p) for p in gpu.processes],
            bound_job=held.get(gpu.uuid),
        )
        for gpu in probe.snapshot()
    ]
    return GpusPublic(
        probe=probe.description,
        gpus=gpus,
        cpu_slots=settings.cpu_slots,
        cpu_slots_bound=service.cpu_slot_holders(session, settings.cpu_slots),
    )
