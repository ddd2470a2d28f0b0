"""What the daemon refuses over HTTP before any route runs, and why.

A request must name this daemon in its `Host` (so a DNS-rebinding web page
cannot reach it), carry the API token when one is set (compared in constant
time, before a byte of the body is read), not be a browser's write from
another origin, send JSON when it sends a body, and keep that body under the
limit (counted while it streams, Content-Length or not).

The decisions are plain functions over plain data (`check_head`,
`body_refusal`), so a test states a request in a line; `Guard` is the thin
ASGI middleware that feeds them and answers a refusal as JSON. It has to be
middleware, not a route dependency: FastAPI reads and parses the body before
any dependency runs.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from server.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# What anyone who reaches the port may read: health, the API's own description, and the dashboard's page and
# assets (server.api.routes.dashboard): no secrets in them, the page reads every job through the API with the token.
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/"})
PUBLIC_PREFIXES = ("/docs/assets/", "/ui/")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Policy:
    """What the guard lets through; built from the settings."""

    token: str | None = None
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES  # lower-case names without a port; "*" lets any through
    allowed_origins: frozenset[str] = frozenset()  # "scheme://host[:port]", lower case
    max_body_bytes: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: Settings, extra_hosts: Iterable[str] = ()) -> Policy:
        hosts = {host_name(h) for h in (*settings.allowed_hosts, *extra_hosts)}
        return cls(
            token=settings.api_token,
            allowed_hosts=LOOPBACK_NAMES | {h for h in hosts if h},
            allowed_origins=frozenset(settings.allowed_origins),
            max_body_bytes=settings.max_body_bytes,
        )


@dataclass(frozen=True)
class Head:
    """What the guard sees of a request before its body: method, path, headers (names in lower case)."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    status: int
    detail: str
    headers: tuple[tuple[str, str], ...] = ()


def _split_host(host: str) -> tuple[str, str]:
    """'[::1]:8000' -> ('::1', '8000'); 'Example.com' -> ('example.com', ''); a bare '::1' stays whole."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port
    return host, ""


def host_name(host: str) -> str:
    """The name in a Host header or a host setting, lower case, without port or brackets: '[::1]:80' -> '::1'."""
    return _split_host(host)[0].rstrip(".")


def _host_and_port(host: str, scheme: str) -> tuple[str, int | None]:
    name, port_text = _split_host(host)
    port = int(port_text) if port_text.isdigit() else None
    return name.rstrip("."), None if port == DEFAULT_PORTS.get(scheme) else port


def token_matches(expected: str, authorization: str | None) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time so its timing says nothing of the token."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        presented = ""
    # Header values arrive as latin-1 text of the bytes sent; the token is compared as those bytes.
    return hmac.compare_digest(presented.strip().encode("latin-1", "replace"), expected.encode("utf-8"))


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's `Origin` names the host the request went to (scheme aside: a TLS proxy may sit between)."""
    parts = urlsplit(origin)
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        return False
    return _host_and_port(parts.netloc, parts.scheme) == _host_and_port(host, parts.scheme)


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def check_head(policy: Policy, head: Head) -> Refusal | None:
    """The refusal a request earns from its method, path and headers alone, or None to let it on."""
    method = head.method.upper()
    headers = head.headers
    if head.path == "/healthz":  # probes (Docker, Kubernetes) reach it by any name, and it says nothing
        return None
    host = headers.get("host")
    if host is None:
        return Refusal(400, "the request has no Host header; send one naming this daemon, e.g. Host: localhost:8000")
    if "*" not in policy.allowed_hosts and host_name(host) not in policy.allowed_hosts:
        names = ", ".join(sorted(policy.allowed_hosts))
        return Refusal(
            400,
            f"this daemon does not answer to the host {host!r} (it answers to {names}); "
            f"to reach it by that name, start it with FTQ_ALLOWED_HOSTS={host_name(host)}",
        )
    if policy.token and not is_public(head.path) and not token_matches(policy.token, headers.get("authorization")):
        return Refusal(
            401,
            "this daemon needs its API token: send 'Authorization: Bearer <FTQ_API_TOKEN>' "
            "(the ftq CLI sends it from the FTQ_API_TOKEN variable)",
            (("www-authenticate", "Bearer"),),
        )
    if method in UNSAFE_METHODS:
        refusal = _cross_origin_refusal(policy, method, host, headers)
        if refusal is not None:
            return refusal
        if _has_body(headers) and not is_json(headers.get("content-type")):
            return Refusal(
                415,
                f"a {method} body must be JSON (Content-Type: application/json), "
                f"not {headers.get('content-type') or 'untyped'}; the CLI turns YAML job files into JSON",
            )
    length = headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            return Refusal(400, f"Content-Length {length!r} is not a byte count")
        if int(length) > policy.max_body_bytes:
            return body_refusal(policy)
    return None


def _cross_origin_refusal(policy: Policy, method: str, host: str, headers: Mapping[str, str]) -> Refusal | None:
    """A browser names the page behind a request in `Origin` (and `Sec-Fetch-Site`); curl and the CLI send neither."""
    origin = headers.get("origin")
    if origin is not None:
        if same_origin(origin, host) or origin.rstrip("/").lower() in policy.allowed_origins:
            return None
        return Refusal(
            403,
            f"a {method} from the web page at {origin} is refused: pages of other origins may not change jobs here; "
            f"to let that page do it, start the daemon with FTQ_ALLOWED_ORIGINS={origin}",
        )
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        return Refusal(
            403,
            f"a {method} from a {site} web page is refused: pages of other sites may not change jobs here; "
            "send it from the API docs at /docs, the ftq CLI or curl",
        )
    return None


def _has_body(headers: Mapping[str, str]) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length.strip() not in ("", "0"))


def body_refusal(policy: Policy) -> Refusal:
    return Refusal(
        413,
        f"the request body is larger than this daemon takes ({policy.max_body_bytes} bytes); "
        "send a smaller body, or raise FTQ_MAX_BODY_BYTES",
    )


class Guard:
    """ASGI middleware: refuse what `check_head` refuses, then read the body up to the limit and pass it on."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = check_head(self.policy, Head(scope["method"], scope["path"], headers))
        if refusal is not None:
            await _refuse(send, refusal)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before it sent the whole body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.policy.max_body_bytes:
                await _refuse(send, body_refusal(self.policy))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, as one message; later calls go to the server (they wait for a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Send, refusal: Refusal) -> None:
    body = json.dumps({"detail": refusal.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body may be unread: the connection cannot carry another request after this answer.
        (b"connection", b"close"),
        *((k.encode(), v.encode()) for k, v in refusal.headers),
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
