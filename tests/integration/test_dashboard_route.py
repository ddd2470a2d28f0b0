"""The dashboard's files as the daemon serves them: public, with a CSP, and nothing outside their folder."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from server.api.routes.dashboard import DASHBOARD_DIR
from tests.integration.daemon import standin_daemon

pytestmark = pytest.mark.integration


def raw_get(port: int, raw_path: bytes) -> httpx.Response:
    """A GET whose path goes out byte for byte (httpx would resolve `..` segments itself)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        request = client.build_request("GET", "/")
        request.url = request.url.copy_with(raw_path=raw_path)
        return client.send(request)


def test_the_page_and_its_assets_are_public_and_carry_the_csp(tmp_path: Path) -> None:
    with standin_daemon(tmp_path / "ftq", api_token="tok") as daemon:
        page = daemon.http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="/ui/js/main.js">' in page.text
        for asset in ("/ui/js/main.js", "/ui/app.css", "/ui/vendor/uplot/uPlot.iife.min.js"):
            answer = daemon.http.get(asset)
            assert answer.status_code == 200, asset
            assert "default-src 'self'" in answer.headers["content-security-policy"]
        assert daemon.http.get("/ui/js/main.js").headers["content-type"].startswith("text/javascript")
        # The data is not public: the API still wants the token.
        assert daemon.http.get("/jobs").status_code == 401
        assert daemon.http.get("/jobs", headers={"Authorization": "Bearer tok"}).status_code == 200


def test_no_path_leaves_the_dashboard_folder(tmp_path: Path) -> None:
    assert (DASHBOARD_DIR.parent / "app.py").is_file()  # what an escape would reach
    with standin_daemon(tmp_path / "ftq") as daemon:
        for raw in (
            b"/ui/../app.py",
            b"/ui/%2e%2e/app.py",
            b"/ui/..%2fapp.py",
            b"/ui/js/../../app.py",
            b"/ui/%2fetc/passwd",
        ):
            answer = raw_get(daemon.port, raw)
            assert answer.status_code == 404, (raw, answer.status_code)
            assert "create_app" not in answer.text
        assert daemon.http.get("/ui/nothing.js").status_code == 404
