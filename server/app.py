"""The daemon: `create_app(settings)` builds the API, its database and its scheduler.

At start it upgrades the database, reconciles what a previous daemon left
running, starts the scheduling loop, and only then serves (STYLE.md 7).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI

from scheduler.loop import Scheduler
from scheduler.probe import GpuProbe, make_probe
from scheduler.probe_cache import RecentProbe
from server.db import make_engine, upgrade_database
from server.deps import require_token
from server.errors import install_handlers
from server.read_cache import make_read_cache
from server.routes import jobs, system
from server.settings import Settings
from server.store import SqlStore

log = logging.getLogger("ftq")


def create_app(settings: Settings | None = None, probe: GpuProbe | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings)
        upgrade_database(engine)
        # The API's threads, and a pooled database connection for each (server.db.pool_size).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        # The scheduler's snapshots, shared with the API's wait reasons while they are at most a tick old.
        gpu_probe = RecentProbe(probe or make_probe(settings.fake_gpus), max_age_s=settings.tick_s)
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
        app.state.reads, close_reads = make_read_cache(engine)
        # What the start made (modules, the app, SQLAlchemy's and pydantic's machinery) is most of the heap and
        # lives as long as the daemon: a full collection need not walk it each time. Without this, each one
        # paused every request for tens of milliseconds, the API's slowest answers (bench.api_load's p99).
        gc.freeze()
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
            close_reads()
            gpu_probe.close()
            engine.dispose()

    app = FastAPI(
        title="ftq",
        version="0.1.0",
        lifespan=lifespan,
        description="Runs many LLM fine-tunes at once on the GPUs of a machine.",
    )
    app.state.settings = settings
    install_handlers(app)
    app.include_router(jobs.router, dependencies=[Depends(require_token)])
    app.include_router(system.router, dependencies=[Depends(require_token)])

    @app.get("/healthz", tags=["system"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
