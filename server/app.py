"""The daemon: `create_app(settings)` builds the API, its database and its scheduler.

At start it upgrades the database, reconciles what a previous daemon left
running, starts the scheduling loop, and only then serves (STYLE.md 7).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio.to_thread
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.engine import Engine

from scheduler.executor import Executor
from scheduler.gpus.cache import RecentProbe
from scheduler.gpus.probe import make_probe
from scheduler.gpus.types import GpuProbe
from scheduler.loop import Scheduler
from server.api.docs import install_docs
from server.api.errors import JsonErrors, install_handlers
from server.api.guard import Guard, Policy
from server.api.openapi import install_openapi
from server.api.read_cache import make_read_cache
from server.api.routes import compare, dashboard, health, jobs, system
from server.api.routes import events as events_routes
from server.db.engine import make_engine, upgrade_database
from server.db.store import SqlStore
from server.live.event_hub import EventHub
from server.live.watchers import Live
from server.lock import DataDirLock
from server.metrics.prometheus import make_registry
from server.services.paths import read_spec_files
from server.settings import Settings
from worker.preflight.confine import worker_settings
from worker.spec.layout import LOG_MAX_BYTES_ENV

log = logging.getLogger("ftq")


def make_cluster(settings: Settings, workers: dict[str, str]) -> tuple[GpuProbe, Executor]:
    """The Ray cluster at FTQ_RAY_ADDRESS: its probe (every usable node's GPUs) and executor (the node agents)."""
    if importlib.util.find_spec("ray") is None:
        raise SystemExit("FTQ_RAY_ADDRESS is set, and Ray is not installed: pip install 'ftq[ray]'")
    from scheduler.ray.executor import connect

    assert settings.ray_address is not None
    return connect(settings.ray_address, settings.data_dir.resolve(), settings.worker_module, workers)


def create_app(
    settings: Settings | None = None,
    probe: GpuProbe | None = None,
    lock: DataDirLock | None = None,
    extra_hosts: tuple[str, ...] = (),
) -> FastAPI:
    """The daemon's app; `lock` is the data dir's, when the caller took it already (`ftq serve` does, to refuse
    a second daemon before uvicorn starts); `extra_hosts` are names it answers to beyond the settings'
    (`ftq serve --host ADDRESS` adds the address)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        daemon = _start(app, settings, probe, lock)
        try:
            yield
        finally:
            await daemon.close()

    app = FastAPI(
        title="ftq",
        version="0.1.0",
        lifespan=lifespan,
        description="Runs many LLM fine-tunes at once on the GPUs of a machine.",
        docs_url=None,  # server.api.docs serves the pages with local assets
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.metrics_registry = make_registry(app.state, app.version)  # GET /metrics reads at scrape time
    _install_api(app, settings, extra_hosts)
    return app


@dataclass
class _Daemon:
    """What the lifespan started, stopped in an order where each part finishes before what it uses."""

    held: DataDirLock
    engine: Engine
    events: EventHub
    gpu_probe: RecentProbe
    scheduler: Scheduler
    live: Live
    close_reads: Callable[[], None]

    async def close(self) -> None:
        await self.live.close()
        self.scheduler.stop()
        self.scheduler.executor.close()
        self.events.stop()
        self.close_reads()
        self.gpu_probe.close()
        self.engine.dispose()
        self.held.release()


def _start(app: FastAPI, settings: Settings, probe: GpuProbe | None, lock: DataDirLock | None) -> _Daemon:
    """The database, then the scheduler (whose start recovers what a previous daemon left running) and the
    watchers; the API serves only after this returns (STYLE.md 7)."""
    held, engine = _open_storage(settings, lock)
    # Before the scheduler: what its recovery changes is in the event streams too.
    events = EventHub(engine)
    events.start()
    recovered_after = events.newest
    gpu_probe, scheduler = _start_scheduler(settings, engine, events, probe)
    live = Live(engine, events, gpu_probe, scheduler.live_pids, settings)  # GPU snapshots and alerts
    live.start(jobs_after=recovered_after)
    app.state.engine, app.state.probe, app.state.events = engine, gpu_probe, events
    # The routes and the metrics reach the loop as a protocol (server.services.loop); the Scheduler itself stays
    # at .scheduler for tests that stop it.
    app.state.loop = app.state.scheduler = scheduler
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
    return _Daemon(held, engine, events, gpu_probe, scheduler, live, close_reads)


def _open_storage(settings: Settings, lock: DataDirLock | None) -> tuple[DataDirLock, Engine]:
    """The data dir, held by this daemon alone, and its database at the newest schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    held = lock if lock is not None and lock.held else DataDirLock(settings.data_dir).acquire()
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings)
    upgrade_database(engine)
    # The API's threads, and a pooled database connection for each (server.db.engine.pool_size).
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
    return held, engine


def _start_scheduler(
    settings: Settings, engine: Engine, events: EventHub, probe: GpuProbe | None
) -> tuple[RecentProbe, Scheduler]:
    """The GPU probe (its snapshots shared with the API's wait reasons while at most a tick old) and the
    scheduling loop, started: on this machine's workers, or on a Ray cluster's at FTQ_RAY_ADDRESS."""
    workers = worker_settings(settings.input_dirs, settings.allow_remote_code, settings.writable_dirs)
    workers[LOG_MAX_BYTES_ENV] = str(settings.worker_log_max_bytes)  # worker.outputs.log_cap keeps the log within it
    cluster_probe, executor = make_cluster(settings, workers) if settings.ray_address else (None, None)
    gpu_probe = RecentProbe(probe or cluster_probe or make_probe(settings.fake_gpus), max_age_s=settings.tick_s)
    scheduler = Scheduler(
        SqlStore(engine, committed=events.poke),
        gpu_probe,
        settings.runs_dir,
        cpu_slots=settings.cpu_slots,
        cancel_grace_s=settings.cancel_grace_s,
        tick_s=settings.tick_s,
        tail_interval_s=settings.tail_interval_s,
        margin_bytes=settings.memory_margin_bytes,
        worker_module=settings.worker_module,
        fault=settings.daemon_fault,
        # Workers check every file they open against the input dirs, and refuse remote code unless allowed.
        daemon_settings=workers,
        executor=executor,  # None: workers on this machine
        spec_files=read_spec_files,  # what the loop's decisions read of a stored spec (config.json)
    )
    scheduler.start()
    return gpu_probe, scheduler


def _install_api(app: FastAPI, settings: Settings, extra_hosts: tuple[str, ...]) -> None:
    """The error handlers, the routes, the docs, the dashboard, the OpenAPI document and the middleware."""
    install_handlers(app)
    for routes in (jobs, system, events_routes, compare, health):
        app.include_router(routes.router)
    install_docs(app)
    dashboard.install(app)
    install_openapi(app, settings)
    app.add_middleware(Guard, policy=Policy.from_settings(settings, extra_hosts))
    app.add_middleware(JsonErrors)  # outermost of ours: what the guard or a route raises still answers JSON


def _operation_id(route: APIRoute) -> str:
    """Operation ids are the route functions' names (get_job, cancel_job ...), which links refer to."""
    return route.name
