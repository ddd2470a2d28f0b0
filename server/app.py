"""The daemon: `create_app(settings)` builds the API, its database and its scheduler.

At start it upgrades the database, reconciles what a previous daemon left
running, starts the scheduling loop, and only then serves (STYLE.md 7).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from scheduler.loop import Scheduler
from scheduler.probe import GpuProbe, make_probe
from server.db import make_engine, upgrade_database
from server.docs import install_docs
from server.errors import JsonErrors, install_handlers
from server.guard import Guard, Policy
from server.openapi import error_responses, install_openapi
from server.routes import jobs, system
from server.settings import Settings
from server.store import SqlStore

log = logging.getLogger("ftq")


def create_app(
    settings: Settings | None = None, probe: GpuProbe | None = None, extra_hosts: tuple[str, ...] = ()
) -> FastAPI:
    """The app; `extra_hosts` are names it answers to beyond the settings' (`ftq serve --host ADDRESS` adds it)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings)
        upgrade_database(engine)
        gpu_probe = probe or make_probe(settings.fake_gpus)
        scheduler = Scheduler(
            SqlStore(engine),
            gpu_probe,
            settings.runs_dir,
            cpu_slots=settings.cpu_slots,
            cancel_grace_s=settings.cancel_grace_s,
            tick_s=settings.tick_s,
            tail_interval_s=settings.tail_interval_s,
            margin_bytes=settings.memory_margin_bytes,
            worker_module=settings.worker_module,
        )
        scheduler.start()
        app.state.engine, app.state.probe, app.state.scheduler = engine, gpu_probe, scheduler
        log.info(
            "ftq serving: data in %s, GPUs: %s, CPU slots: %d",
            settings.data_dir.resolve(),
            gpu_probe.description,
            settings.cpu_slots,
        )
        try:
            yield
        finally:
            scheduler.stop()
            gpu_probe.close()
            engine.dispose()

    app = FastAPI(
        title="ftq",
        version="0.1.0",
        lifespan=lifespan,
        description="Runs many LLM fine-tunes at once on the GPUs of a machine.",
        docs_url=None,  # server.docs serves the pages with local assets
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    install_handlers(app)
    app.include_router(jobs.router)
    app.include_router(system.router)

    @app.get("/healthz", tags=["system"], responses=error_responses(413, 500))
    def healthz() -> dict[str, str]:
        """Public, whatever the token: 200 while the daemon serves."""
        return {"status": "ok"}

    install_docs(app)
    install_openapi(app, settings)
    app.add_middleware(Guard, policy=Policy.from_settings(settings, extra_hosts))
    app.add_middleware(JsonErrors)  # outermost of ours: what the guard or a route raises still answers JSON
    return app


def _operation_id(route: APIRoute) -> str:
    """Operation ids are the route functions' names (get_job, cancel_job ...), which links refer to."""
    return route.name
