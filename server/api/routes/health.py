"""GET /healthz: whether the daemon can do its work, public whatever the token (server.api.guard)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.api.deps import LoopDep, SettingsDep
from server.api.openapi import error_responses
from server.services.health import health_problems
from server.services.machine import cluster_nodes

router = APIRouter(tags=["system"])


@router.get("/healthz", responses=error_responses(413, 500, 503))
async def healthz(request: Request, loop: LoopDep, settings: SettingsDep) -> JSONResponse:
    """200 when the daemon can do its work; 503 with every reason when it cannot. Public, whatever the token."""
    problems = health_problems(loop.health, time.monotonic(), settings.tick_s)
    if problems:
        return JSONResponse({"status": "unhealthy", "detail": "; ".join(problems), "problems": problems}, 503)
    # On a Ray cluster, nodes ftq cannot use (no shared data dir, gone): the daemon works on the others.
    warnings = [
        f"Ray node {node.node[:8]} ({node.address}) is not used ({node.state}): {node.problem or 'no reason given'}"
        for node in cluster_nodes(request.app.state.probe)
        if node.state != "usable"
    ]
    return JSONResponse({"status": "ok", "warnings": warnings} if warnings else {"status": "ok"})
