"""The daemon's own watchers: GPU snapshots into the event log, and the alerts (server.live.alerts) sent three ways —
an `alert` event on /events, a log line, and FTQ_WEBHOOK_URL's POST.

Two asyncio tasks of the app, beside the scheduler rather than in it: they only read what the scheduler and the
probe already keep, so nothing here can slow or stop placement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.db.event_log import TERMINAL_STATES, add_events, job_state, stamp
from server.live.alerts import Alert, job_alerts, snapshot_changed, vram_alerts
from server.live.event_hub import EventHub
from server.live.webhook import Webhook
from server.services.jobs import leases_by_resource
from server.services.machine import recent_gpus_view
from server.settings import Settings

log = logging.getLogger("ftq.alerts")


class Live:
    """Started in the app's lifespan after the scheduler; `close()` stops both tasks and the webhook."""

    def __init__(
        self, engine: Engine, hub: EventHub, probe: Any, live_pids: Callable[[], dict[int, int]], settings: Settings
    ) -> None:
        self.engine, self.hub, self.probe, self.live_pids, self.settings = engine, hub, probe, live_pids, settings
        self.webhook = Webhook(settings.webhook_url) if settings.webhook_url else None
        self._last_gpus: list[dict[str, Any]] | None = None
        self._alerted: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, jobs_after: int) -> None:
        """`jobs_after`: the event id from which job ends are alerted (the hub's start, before recovery ran)."""
        self._tasks = [
            asyncio.create_task(self._watch_jobs(jobs_after)),
            asyncio.create_task(self._watch_gpus()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.webhook is not None:
            await anyio.to_thread.run_sync(self.webhook.close)

    async def _watch_jobs(self, cursor: int) -> None:
        while True:
            found, cursor = await self.hub.after(cursor)
            for i, event in enumerate(found):
                later = any(e.kind == "state" and e.job_id == event.job_id for e in found[i + 1 :])
                if not event.ends_job or later or event.job_id is None:
                    continue
                try:
                    ended = await anyio.to_thread.run_sync(self._still_ended, event.job_id)
                except Exception:  # the next end is alerted all the same
                    log.exception("job %s: cannot read its state for the end alert", event.job_id)
                    continue
                if ended:
                    data = event.data
                    await self._send(job_alerts(event.job_id, data.get("name", "?"), data["state"], data.get("reason")))

    def _still_ended(self, job_id: int) -> bool:
        with Session(self.engine) as session:
            return job_state(session, job_id) in TERMINAL_STATES

    async def _watch_gpus(self) -> None:
        while True:
            try:
                gpus = await anyio.to_thread.run_sync(self._read_gpus)
                alerts, self._alerted = vram_alerts(gpus, self.settings.alert_vram_ratio, self._alerted)
                if gpus and snapshot_changed(self._last_gpus, gpus):
                    await anyio.to_thread.run_sync(self._write, [(None, "gpus", {"gpus": gpus, "at": stamp()})])
                    self._last_gpus = gpus
                await self._send(alerts)
            except Exception:  # a probe or database hiccup: the next reading tries again
                log.exception("GPU snapshot failed")
            await asyncio.sleep(self.settings.gpu_event_interval_s)

    def _read_gpus(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            holders = leases_by_resource(session)
        gpus = recent_gpus_view(self.probe, holders, self.settings.cpu_slots, set(self.live_pids().values()))
        return [g.model_dump(mode="json") for g in gpus]

    async def _send(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        at = stamp()
        rows = [(None, "alert", a.data(at)) for a in alerts]  # machine-wide: not in a job's own stream
        await anyio.to_thread.run_sync(self._write, rows)
        for alert in alerts:
            log.warning("alert %s: %s", alert.alert, alert.message)
            if self.webhook is not None:
                self.webhook.send(alert.data(at))

    def _write(self, rows: list[tuple[int | None, str, dict[str, Any]]]) -> None:
        with Session(self.engine) as session:
            add_events(session, rows)
            session.commit()
