"""What the HTTP guard refuses before a route runs: pure decisions over a request's head, and the body limit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from server.api import guard
from server.api.guard import Guard, Head, Policy, check_head, host_name, same_origin, token_matches
from server.serve import exposure_problem
from server.settings import Settings

OPEN = Policy()
LOCKED = Policy(token="s3cret")


def head(method: str = "GET", path: str = "/jobs", **headers: str) -> Head:
    return Head(method, path, {"host": "127.0.0.1:8000", **{k.replace("_", "-"): v for k, v in headers.items()}})


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8000", "localhost"),
        ("LOCALHOST", "localhost"),
        ("127.0.0.1:1", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("gpu-box.example.:80", "gpu-box.example"),
    ],
)
def test_host_names_lose_port_brackets_and_case(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:9", "[::1]:8000", "::1", "localhost"])
def test_loopback_names_on_any_port_are_served(host):
    assert check_head(OPEN, Head("GET", "/jobs", {"host": host})) is None


def test_a_foreign_host_is_refused_with_the_setting_that_would_allow_it():
    refusal = check_head(OPEN, Head("GET", "/jobs", {"host": "evil.example:8000"}))
    assert refusal is not None and refusal.status == 400
    assert "FTQ_ALLOWED_HOSTS=evil.example" in refusal.detail and "localhost" in refusal.detail
    assert check_head(OPEN, Head("GET", "/jobs", {})).status == 400  # no Host at all


def test_allowed_hosts_widen_the_names_and_the_star_takes_any():
    settings = Settings(allowed_hosts="gpu-box, Build.Example:8000")
    policy = Policy.from_settings(settings, extra_hosts=("10.0.0.5",))
    for host in ("gpu-box:8000", "build.example", "10.0.0.5:8000", "localhost:1"):
        assert check_head(policy, Head("GET", "/jobs", {"host": host})) is None, host
    assert check_head(policy, Head("GET", "/jobs", {"host": "other:8000"})).status == 400
    anything = Policy(allowed_hosts=frozenset({"*"}))
    assert check_head(anything, Head("GET", "/jobs", {"host": "other:8000"})) is None


def test_healthz_answers_any_host_and_no_token():
    assert check_head(LOCKED, Head("GET", "/healthz", {"host": "10.1.2.3:8000"})) is None


def test_the_token_is_needed_everywhere_but_the_public_paths():
    missing = check_head(LOCKED, head())
    assert missing.status == 401 and "Bearer" in missing.detail
    assert ("www-authenticate", "Bearer") in missing.headers
    assert check_head(LOCKED, head(authorization="Bearer wrong")).status == 401
    assert check_head(LOCKED, head(authorization="Bearer s3cret")) is None
    assert check_head(LOCKED, head(authorization="bearer s3cret")) is None  # the scheme's case does not matter
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/assets/swagger-ui.css"):
        assert check_head(LOCKED, head(path=path)) is None, path
    assert check_head(OPEN, head()) is None  # no token set: none needed


def test_the_dashboard_page_and_assets_are_public_and_its_data_is_not():
    for path in ("/", "/ui/js/main.js", "/ui/vendor/uplot/uPlot.iife.min.js"):
        assert check_head(LOCKED, head(path=path)) is None, path
    for path in ("/ui", "/uix/main.js", "/events", "/jobs/1/metrics", "/compare", "/gpus", "//"):
        assert check_head(LOCKED, head(path=path)).status == 401, path


@pytest.mark.parametrize(
    "authorization", [None, "", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cretX", "Bearer  ", "Bearer sé"]
)
def test_only_the_exact_token_matches(authorization):
    assert not token_matches("s3cret", authorization)


def test_the_token_is_compared_in_constant_time(monkeypatch):
    """The comparison is hmac.compare_digest over the whole value, never `==`, which stops at the first difference."""
    calls: list[tuple[Any, Any]] = []
    real = guard.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(guard.hmac, "compare_digest", spy)
    assert token_matches("s3cret", "Bearer s3cret")
    assert not token_matches("s3cret", "Bearer nope")
    assert not token_matches("s3cret", None)  # compared too, so a missing token takes as long as a wrong one
    assert calls == [(b"s3cret", b"s3cret"), (b"nope", b"s3cret"), (b"", b"s3cret")]
    assert check_head(LOCKED, head(authorization="Bearer s3cret")) is None and len(calls) == 4


def test_a_write_from_another_origin_is_refused():
    refusal = check_head(OPEN, head("POST", "/jobs/1/cancel", origin="http://evil.example"))
    assert refusal.status == 403 and "FTQ_ALLOWED_ORIGINS=http://evil.example" in refusal.detail
    assert check_head(OPEN, head("POST", "/jobs/1/cancel", origin="null")).status == 403  # a sandboxed page
    site = check_head(OPEN, head("POST", "/jobs/1/cancel", sec_fetch_site="cross-site"))
    assert site.status == 403
    # Reading is not refused: without CORS headers the page cannot read the answer.
    assert check_head(OPEN, head("GET", "/jobs", origin="http://evil.example")) is None


def test_writes_from_the_same_origin_an_allowed_one_curl_and_the_cli_pass():
    assert check_head(OPEN, head("POST", "/jobs/1/cancel")) is None  # curl -X POST: no Origin, no body
    same = head("POST", "/jobs/1/cancel", origin="http://127.0.0.1:8000", sec_fetch_site="same-origin")
    assert check_head(OPEN, same) is None  # the Swagger page at /docs
    allowed = Policy(allowed_origins=frozenset({"https://ui.example"}))
    assert check_head(allowed, head("POST", "/jobs/1/cancel", origin="https://ui.example")) is None


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://localhost:8000", "localhost:8000", True),
        ("http://localhost", "localhost:80", True),
        ("https://ftq.example", "ftq.example", True),  # TLS ends at a proxy that passes the Host on
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://localhost:8001", "localhost:8000", False),
        ("http://evil.example:8000", "localhost:8000", False),
        ("null", "localhost:8000", False),
        ("file://", "localhost:8000", False),
    ],
)
def test_same_origin(origin, host, same):
    assert same_origin(origin, host) is same


def test_a_body_must_be_json():
    refusal = check_head(OPEN, head("POST", "/jobs/1/cancel", content_type="text/plain", content_length="1"))
    assert refusal.status == 415 and "application/json" in refusal.detail
    chunked = head("POST", "/jobs", content_type="application/x-www-form-urlencoded", transfer_encoding="chunked")
    assert check_head(OPEN, chunked).status == 415
    for content_type in ("application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
        assert check_head(OPEN, head("POST", "/jobs", content_type=content_type, content_length="2")) is None
    assert check_head(OPEN, head("POST", "/jobs/1/cancel", content_length="0")) is None  # no body, no type needed


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read():
    small = Policy(max_body_bytes=1024)
    big = head("POST", "/jobs", content_type="application/json", content_length="1025")
    refusal = check_head(small, big)
    assert refusal.status == 413 and "FTQ_MAX_BODY_BYTES" in refusal.detail
    json_body = {"content_type": "application/json"}
    assert check_head(small, head("POST", "/jobs", content_length="1024", **json_body)) is None
    assert check_head(small, head("POST", "/jobs", content_length="lots", **json_body)).status == 400
    # Without the token, the answer is 401 whatever the size: nothing of the body is read.
    assert check_head(Policy(token="t", max_body_bytes=1024), big).status == 401


def run_guard(policy: Policy, chunks: list[bytes], **headers: str) -> tuple[int, dict[str, Any], bytes | None]:
    """Send a request through Guard to an app that echoes the size of the body it got."""
    seen: dict[str, Any] = {}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen["body"] = message["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in {"host": "localhost", **headers}.items()]
    scope = {"type": "http", "method": "POST", "path": "/jobs", "headers": raw}
    asyncio.run(Guard(app, policy)(scope, receive, send))
    body = json.loads(sent[1]["body"]) if sent[0]["status"] != 200 else None
    return sent[0]["status"], body or {}, seen.get("body")


def test_a_streamed_body_is_counted_and_cut_at_the_limit():
    policy = Policy(max_body_bytes=1024)
    chunked = {"transfer_encoding": "chunked", "content_type": "application/json"}
    status, body, seen = run_guard(policy, [b"x" * 600] * 3, **chunked)
    assert status == 413 and "1024 bytes" in body["detail"] and seen is None  # the app never ran
    status, _, seen = run_guard(policy, [b"{", b"}"], **chunked)
    assert status == 200 and seen == b"{}"  # what was read reaches the app whole


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_addresses_serve_without_a_token(host):
    assert exposure_problem(host, Settings(), insecure=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "gpu-box"])
def test_a_reachable_address_needs_a_token_or_insecure(host):
    problem = exposure_problem(host, Settings(), insecure=False)
    assert problem and f"refusing to serve on {host}" in problem
    assert "FTQ_API_TOKEN" in problem and "--insecure" in problem
    assert exposure_problem(host, Settings(api_token="t"), insecure=False) is None
    assert exposure_problem(host, Settings(), insecure=True) is None
    assert exposure_problem(host, Settings(api_token="  "), insecure=False)  # a blank token is no token


def test_the_settings_read_comma_lists_and_refuse_what_is_not_a_host_or_an_origin(monkeypatch):
    monkeypatch.setenv("FTQ_ALLOWED_HOSTS", "gpu-box, 10.0.0.5")
    monkeypatch.setenv("FTQ_ALLOWED_ORIGINS", "https://UI.example/")
    monkeypatch.setenv("FTQ_API_TOKEN", "")  # compose passes an unset variable as empty: no token
    settings = Settings()
    assert settings.allowed_hosts == ["gpu-box", "10.0.0.5"] and settings.allowed_origins == ["https://ui.example"]
    assert settings.api_token is None and settings.max_body_bytes == 1 << 20
    with pytest.raises(ValueError, match="not an origin"):
        Settings(allowed_origins="ui.example")
    with pytest.raises(ValueError, match="not a host name"):
        Settings(allowed_hosts="http://gpu-box/")
