"""The API's OpenAPI document, made to say what the daemon really answers.

Each operation lists the errors it can give, with their bodies (`Problem`,
`InvalidRequest` in `server.api.errors`); the bearer scheme is declared (required
when the daemon has a token, optional when it has none); `POST /jobs` carries
a working example and links to what can be done with the job it made, so a
client (and the fuzz test's state machine) can follow them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.api.errors import InvalidRequest, Problem
from server.settings import Settings

ERRORS: dict[int, tuple[type, str]] = {
    400: (Problem, "A Host this daemon does not answer to (see FTQ_ALLOWED_HOSTS), or a malformed request."),
    401: (Problem, "No API token, or the wrong one (only when the daemon has FTQ_API_TOKEN set)."),
    403: (Problem, "A write sent by a web page of another origin (see FTQ_ALLOWED_ORIGINS)."),
    404: (Problem, "No such job."),
    409: (Problem, "The job's state does not allow this transition."),
    413: (Problem, "The body is larger than FTQ_MAX_BODY_BYTES."),
    415: (Problem, "A body that is not JSON."),
    422: (InvalidRequest, "A bad spec or parameter: every problem at once, one entry per field."),
    500: (Problem, "An unforeseen failure of the daemon; its log has the traceback."),
    503: (Problem, "The database is locked by another writer; retry in a moment."),
    507: (Problem, "The daemon's disk is full."),
}
# Every operation behind the guard can meet these; writes also the ones of the second line.
ANY = (400, 401, 413, 500, 503)
WRITE = (403, 415, 507)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ERRORS[code][0], "description": ERRORS[code][1]} for code in sorted(set(codes))}


def links_to_job(job_id: str = "$response.body#/id") -> dict[str, Any]:
    """OpenAPI links from a response that holds a job to the operations on that job."""
    targets = {
        "GetJob": ("get_job", "The job, whole."),
        "CancelJob": ("cancel_job", "Cancel it."),
        "RequeueJob": ("requeue_job", "Requeue it once it has failed, run out of memory or been cancelled."),
        "GetMetrics": ("get_metrics", "Its metric records."),
        "GetLogs": ("get_logs", "Its worker's log."),
    }
    return {
        name: {"operationId": operation, "parameters": {"job_id": job_id}, "description": description}
        for name, (operation, description) in targets.items()
    }


# The shipped tiny model and demo data: this example trains in seconds on a CPU slot.
EXAMPLE_JOB: dict[str, Any] = {
    "name": "cs-billing-tiny",
    "gpus": 0,
    "model_name_or_path": "configs/models/tiny-chat",
    "dataset_dir": "configs/data",
    "dataset": "cs_billing",
    "finetuning_type": "lora",
    "lora_target": "all",
    "cutoff_len": 128,
    "per_device_train_batch_size": 2,
    "learning_rate": 5e-3,
    "max_steps": 3,
    "logging_steps": 1,
}
JOB_EXAMPLES = {
    "tiny": {
        "summary": "LoRA on the shipped tiny model, on a CPU slot",
        "description": "Paths are relative to the first of FTQ_INPUT_DIRS (the daemon's working dir by default).",
        "value": EXAMPLE_JOB,
    }
}

BEARER = "bearerAuth"
# Operations that read their body as a plain object (to check it whole) but take a job spec.
SPEC_BODIES = ("submit_job",)


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Build the document once, from the routes, and add what FastAPI does not write: the bearer scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "FTQ_API_TOKEN, as `Authorization: Bearer <token>`. "
                + (
                    "This daemon has one set: every operation but /healthz needs it."
                    if settings.api_token
                    else "This daemon has none set, so none is needed."
                ),
            }
        }
        # With no token set the scheme is optional: `{}` is "no security" in OpenAPI.
        security: list[dict[str, list[str]]] = [{BEARER: []}] if settings.api_token else [{BEARER: []}, {}]
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                _errors_are_json(operation)
                if operation.get("operationId") in SPEC_BODIES:
                    content = operation["requestBody"]["content"]["application/json"]
                    content["schema"] = {"$ref": "#/components/schemas/JobSpec"}
                if path != "/healthz":
                    operation["security"] = security
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _errors_are_json(operation: dict[str, Any]) -> None:
    """FastAPI files an error body under the route's own media type (text/plain for the logs); errors are JSON."""
    for code, response in operation.get("responses", {}).items():
        content = response.get("content")
        if code[0] in "45" and content and "application/json" not in content:
            response["content"] = {"application/json": next(iter(content.values()))}
