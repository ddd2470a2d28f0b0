"""The dashboard: one static page at `/` and its assets under `/ui/`, served from server/dashboard/.

The files hold no data: the page reads everything through the API with the
token (server.api.guard lets the page and its assets through without one). Every
answer carries a Content-Security-Policy that lets the page load and call only
this daemon, so a job's name or log line shown on it can never run as script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "dashboard"
ASSETS_URL = "/ui"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # A new page after an upgrade is read fresh; an unchanged one costs a 304 (ETag, Last-Modified).
    "cache-control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """StaticFiles (which refuses any path that leaves its folder) with the dashboard's headers on each answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install(app: FastAPI) -> None:
    app.mount(ASSETS_URL, DashboardFiles(directory=DASHBOARD_DIR), name="dashboard-assets")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html", headers=SECURITY_HEADERS)
