"""The named errors of the service layer: what went wrong, the status it stands for, and each field's problem.

Every error has `detail`: a sentence a person can act on; a 422 also has
`errors`: one entry per field or parameter, with its name and the fix.
How each becomes a JSON response is the API's business (server.api.errors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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


class Unavailable(FtqError):
    """The daemon cannot answer now (its filesystem is stuck); the same request may succeed later."""

    status_code = 503


def field_error(field: str, message: str) -> dict[str, Any]:
    return {"field": field, "message": message}


LOCATIONS = ("body", "path", "query", "header", "cookie")
RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "int_parsing", "int_from_float")


REQUIRED_HINTS = {
    "model_name_or_path": "the local directory of the model to fine-tune",
    "dataset": "the datasets to train on, comma-separated names from dataset_dir/dataset_info.json",
    "ids": "name the jobs to compare as ?ids=1&ids=2",
}


def describe_error(error: Any, ranges: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One pydantic error as {field, message}, with a fix where we know one.

    `ranges` names the range of each bounded request parameter ("an integer from 1 to ..."), so a
    value out of range (or no integer at all) gets a message that says which values are taken.
    """
    loc = list(error.get("loc", ()))
    where = loc.pop(0) if loc and loc[0] in LOCATIONS else "body"
    field = ".".join(str(part) for part in loc) or "body"
    if error.get("type") == "json_invalid":
        return field_error("body", f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'invalid')})")
    if error.get("type") == "extra_forbidden":
        message = f"unknown key {field!r}: ftq does not know it; remove it or check its spelling"
    elif error.get("type") == "missing":
        message = f"{field} is required: {REQUIRED_HINTS.get(field, 'add it to the spec')}"
    elif where != "body" and ranges and field in ranges and error.get("type") in RANGE_ERRORS:
        message = f"{field} must be {ranges[field]}; got {error.get('input')!r}"
    else:
        message = str(error.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
    return field_error(field, message)
