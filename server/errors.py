"""The named errors of the service layer, and how each becomes a JSON response.

Every error body has `detail`: a sentence a person can act on; a spec error
also has `errors`: one entry per field, with the field's name and the fix.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class FtqError(Exception):
    status_code = 400

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class NotFound(FtqError):
    status_code = 404


class Conflict(FtqError):
    """A transition the job's state does not allow."""

    status_code = 409


class InvalidSpec(FtqError):
    status_code = 422

    @classmethod
    def from_errors(cls, errors: list[dict[str, Any]]) -> InvalidSpec:
        return cls("invalid job spec — " + "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)


class Unauthorized(FtqError):
    status_code = 401


class Unavailable(FtqError):
    """The daemon cannot answer now (its filesystem is stuck); the same request may succeed later."""

    status_code = 503


def field_error(field: str, message: str) -> dict[str, Any]:
    return {"field": field, "message": message}


def describe_error(error: Any) -> dict[str, Any]:
    """One pydantic error as {field, message}, with a fix where we know one."""
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
    field = ".".join(loc) or "body"
    if error.get("type") == "extra_forbidden":
        message = f"unknown key {field!r}: ftq does not know it; remove it or check its spelling"
    elif error.get("type") == "missing":
        message = f"{field} is required"
    else:
        message = str(error.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
    return field_error(field, message)


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
    @app.exception_handler(FtqError)
    async def _ftq_error(_request: Request, exc: FtqError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors:
            body["errors"] = exc.errors
        return JSONResponse(encodable(body), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [describe_error(e) for e in exc.errors()]
        summary = "; ".join(
            f"{e['field']}: {e['message']}" if e["field"] not in e["message"] else e["message"] for e in errors
        )
        return JSONResponse(encodable({"detail": f"invalid job spec — {summary}", "errors": errors}), status_code=422)
