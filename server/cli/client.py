"""The CLI's HTTP client: requests and streams to the daemon, its errors in the CLI's words (job files: jobfiles)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from server.cli.printable import printable

TERMINAL = {"succeeded", "failed", "oom", "cancelled"}
DEFAULT_URL = "http://127.0.0.1:8000"
_JOB_PATH = re.compile(r"^/jobs/(\d+)(/|$)")
_NO_JOB = re.compile(r"^job (\d+) does not exist")


class CliError(SystemExit):
    """A failure the CLI reports in one sentence (exit status 1), never a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message if message.startswith("ftq:") else f"ftq: {message}")


def unreachable_message(url: str, exc: BaseException | None = None) -> str:
    why = f" ({exc})" if exc is not None else ""
    return f"ftq: cannot reach the daemon at {url}{why}; start it with `ftq serve` or set FTQ_URL"


def error_message(status: int, body: Any, path: str, token_set: bool) -> str:
    """An error answer of the daemon as the CLI says it: what went wrong, and what to do."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if status == 401:
        if token_set:
            return f"ftq: the daemon refused the token in FTQ_API_TOKEN ({detail}); set it to the daemon's token"
        return "ftq: the daemon wants a token: set FTQ_API_TOKEN"
    job = _JOB_PATH.match(path) or (_NO_JOB.match(detail) if isinstance(detail, str) else None)
    if status == 404 and job:
        return f"ftq: no job {job.group(1)}: run `ftq list`"
    lines = [f"ftq: {status}: {detail}"]
    if isinstance(body, dict):
        lines += [f"  - {e['field']}: {e['message']}" for e in body.get("errors", []) if isinstance(e, dict)]
    return "\n".join(lines)


class Client:
    """A thin HTTP client; errors come back as CliError in the CLI's words."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("FTQ_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("FTQ_API_TOKEN")
        self.token_set = bool(token)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def check(self, response: httpx.Response, path: str) -> None:
        if response.status_code < 400:
            return
        try:
            body = printable(response.json())
        except ValueError:
            body = {"detail": printable(response.text)}
        raise CliError(error_message(response.status_code, body, path, self.token_set))

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The raw answer, once checked; TransportError propagates (for callers that retry)."""
        response = self.http.request(method, path, **kwargs)
        self.check(response, path)
        return response

    def send_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON, every string in it printable; TransportError propagates (for callers that retry)."""
        return printable(self.send(method, path, **kwargs).json())

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON (or text), every string in it printable; an unreachable daemon is a CliError."""
        try:
            response = self.send(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(unreachable_message(self.url, exc)) from exc
        if response.headers.get("content-type", "").startswith("application/json"):
            return printable(response.json())
        return printable(response.text)

    @contextmanager
    def stream(self, path: str, headers: dict[str, str], read_timeout: float) -> Iterator[httpx.Response]:
        """A streamed GET (the event streams), checked; TransportError propagates for the caller's retry."""
        timeout = httpx.Timeout(10.0, read=read_timeout)
        with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
            self.check(response, path)
            yield response

    def dashboard(self) -> str:
        return self.url + "/"
