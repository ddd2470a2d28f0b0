"""How errors become JSON responses: the named errors' bodies, the framework's own, storage failures, the rest.

Every error body has `detail`: a sentence a person can act on; a 422 also has
`errors`: one entry per field or parameter, with its name and the fix. Nothing
leaves as plain text: a full disk is a 507, a locked database a 503, anything
unforeseen a 500 with a sentence (and its traceback in the daemon's log).
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from server.services.errors import FtqError, describe_error

log = logging.getLogger("ftq")


class Problem(BaseModel):
    """Every error body: a sentence saying what went wrong and what to do."""

    detail: str = Field(description="What went wrong and what to do about it.")


class FieldProblem(BaseModel):
    field: str = Field(description="The spec field or request parameter, e.g. cutoff_len or job_id.")
    message: str = Field(description="Why it is wrong and how to fix it.")


class InvalidRequest(Problem):
    """A 422: every problem of the request at once, one entry per field or parameter."""

    errors: list[FieldProblem]


def parameter_ranges(route: Any) -> dict[str, str]:
    """'an integer from LO to HI' for each bounded path and query parameter of a route."""
    ranges: dict[str, str] = {}
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return ranges
    for param in get_flat_params(dependant):
        bounds = {name: getattr(m, name, None) for m in param.field_info.metadata for name in ("ge", "gt", "le", "lt")}
        bounds = {k: v for k, v in bounds.items() if v is not None}
        if not bounds:
            continue
        low = bounds["ge"] if "ge" in bounds else bounds["gt"] + 1 if "gt" in bounds else None
        high = bounds["le"] if "le" in bounds else bounds["lt"] - 1 if "lt" in bounds else None
        if low is not None and high is not None:
            ranges[param.alias] = f"an integer from {low} to {high}"
        elif low is not None:
            ranges[param.alias] = f"an integer of at least {low}"
        elif high is not None:
            ranges[param.alias] = f"an integer of at most {high}"
    return ranges


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (SQLAlchemy's `.orig`) and what caused it, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        todo += [current.__cause__, current.__context__, orig if isinstance(orig, BaseException) else None]


def storage_problem(exc: BaseException, data_dir: str) -> tuple[int, str] | None:
    """507 for a full disk, 503 for a locked database, None for anything else."""
    for cause in _causes(exc):
        text = str(cause).lower()
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            where = cause.filename or data_dir
            return 507, f"the daemon's disk is full: no space left for {where}; free space there (or raise the quota)"
        if isinstance(cause, sqlite3.DatabaseError) and "database or disk is full" in text:
            return 507, f"the daemon's disk is full: the database in {data_dir} cannot grow; free space there"
        if isinstance(cause, sqlite3.OperationalError) and "database is locked" in text:
            return 503, "the database is busy (locked by another writer); retry in a moment"
    return None


def encodable(value: Any) -> Any:
    """Strings made safe to send as UTF-8: a lone surrogate (a JSON "\\ud800" echoed back, a name read from
    a file) would make the response itself fail; it is sent escaped instead."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [encodable(v) for v in value]
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    return value


def install_handlers(app: FastAPI) -> None:
    def data_dir(request: Request) -> str:
        settings = getattr(request.app.state, "settings", None)
        return str(settings.data_dir.resolve()) if settings is not None else "the data dir"

    @app.exception_handler(FtqError)
    async def _ftq_error(_request: Request, exc: FtqError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors or exc.status_code == 422:
            body["errors"] = exc.errors or []
        return JSONResponse(encodable(body), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        ranges = parameter_ranges(request.scope.get("route"))
        errors = [describe_error(e, ranges) for e in exc.errors()]
        summary = "; ".join(
            f"{e['field']}: {e['message']}" if e["field"] not in e["message"] else e["message"] for e in errors
        )
        in_body = all((e.get("loc") or ("body",))[0] == "body" for e in exc.errors())
        what = "invalid job spec" if in_body else "invalid request"
        return JSONResponse(encodable({"detail": f"{what} — {summary}", "errors": errors}), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"there is no {request.url.path} in this API; /docs lists what there is"
        elif exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the body could not be read: send a JSON object, encoded as UTF-8"
        elif exc.status_code == 405:
            allowed = path_methods(request)
            allow = {"allow": ", ".join(allowed)}
            if request.method == "OPTIONS":  # the methods a path takes, asked for: an answer, not an error
                return Response(status_code=204, headers=allow)
            detail = f"{request.method} is not a method of {request.url.path}; it takes {allow['allow']}"
            return JSONResponse(encodable({"detail": detail}), status_code=405, headers=allow)
        return JSONResponse(encodable({"detail": str(detail)}), status_code=exc.status_code, headers=exc.headers)

    async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
        found = storage_problem(exc, data_dir(request))
        if found is None:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            detail = unexpected_detail(request.method, request.url.path, exc)
            return JSONResponse(encodable({"detail": detail}), status_code=500)
        status, detail = found
        log.error("%s %s: %s (%s)", request.method, request.url.path, detail, exc)
        return JSONResponse(
            {"detail": detail}, status_code=status, headers={"retry-after": "1"} if status == 503 else {}
        )

    app.add_exception_handler(DBAPIError, _storage_error)
    app.add_exception_handler(OSError, _storage_error)


def path_methods(request: Request) -> list[str]:
    """Every method the request's path takes, across all its routes, and OPTIONS. Starlette's own 405 names the
    methods of the first route whose path matches (POST for /jobs, whose GET is another route)."""
    methods = {"OPTIONS"}
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):  # each asked of the routes as a request would
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            methods.add(method)
    return sorted(methods)


def unexpected_detail(method: str, path: str, exc: BaseException) -> str:
    return (
        f"the daemon failed on {method} {path} ({type(exc).__name__}); the traceback is in its log — please report it"
    )


class JsonErrors:
    """ASGI middleware: an exception nothing else handled becomes a JSON 500, its traceback logged.

    Starlette's own last resort answers plain text and re-raises, which makes uvicorn drop the
    connection a client may be about to reuse; this answers and keeps the connection.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error("%s %s failed", scope["method"], scope["path"], exc_info=exc)
            if started:  # too late for an answer of our own
                raise
            detail = unexpected_detail(scope["method"], scope["path"], exc)
            await JSONResponse(encodable({"detail": detail}), status_code=500)(scope, receive, send)
