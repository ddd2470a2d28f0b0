"""The OpenAPI document says what the API answers, the docs pages work offline, and errors stay JSON.

In process: the app is built but not started (no database, no scheduler), which is all these routes need.
"""

from __future__ import annotations

import errno
import re
import sqlite3
from typing import Any

import pytest
import sqlalchemy.exc
from fastapi.testclient import TestClient

from server.api.errors import storage_problem
from server.api.openapi import EXAMPLE_JOB
from server.app import create_app
from server.db.models import REQUEUE_FIELDS, RequeueRequest
from server.services.errors import describe_error
from server.settings import Settings
from worker.spec.job import JobSpec


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings(api_token="s3cret")), base_url="http://127.0.0.1:8000")


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")  # public: no token
    assert response.status_code == 200
    return response.json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_the_bearer_scheme_is_declared_and_every_operation_but_healthz_needs_it(document):
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for method, path, op in operations(document):
        expected = None if path == "/healthz" else [{"bearerAuth": []}]
        assert op.get("security") == expected, (method, path)
    open_doc = TestClient(create_app(Settings()), base_url="http://localhost").get("/openapi.json").json()
    assert open_doc["paths"]["/jobs"]["get"]["security"] == [{"bearerAuth": []}, {}]  # no token set: optional


def test_errors_are_documented_as_they_are(document):
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["InvalidRequest"]["required"]) == {"detail", "errors"}
    assert schemas["InvalidRequest"]["properties"]["detail"]["type"] == "string"
    assert schemas["Problem"]["required"] == ["detail"]
    for method, path, op in operations(document):
        responses = op["responses"]
        if path != "/healthz":
            assert {"400", "401", "500", "503"} <= set(responses), (method, path)
        if method == "post" and path != "/healthz":
            assert {"403", "413", "415"} <= set(responses), (method, path)
        if "{job_id}" in path:
            assert "404" in responses, (method, path)
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/InvalidRequest" if code == "422" else "/Problem"), (method, path, code)
    cancel = document["paths"]["/jobs/{job_id}/cancel"]["post"]["responses"]
    assert {"409", "507"} <= set(cancel)


def test_parameters_are_bounded_to_what_sqlite_holds(document):
    int64 = 2**63 - 1
    params = {
        (path, p["name"]): p["schema"]
        for path, item in document["paths"].items()
        for op in item.values()
        for p in op.get("parameters", [])
    }
    assert params[("/jobs/{job_id}", "job_id")]["maximum"] == int64 and params[("/jobs/{job_id}", "job_id")]["minimum"]
    assert params[("/jobs", "offset")]["maximum"] == int64
    since = params[("/jobs/{job_id}/metrics", "since")]["anyOf"][0]
    attempt = params[("/jobs/{job_id}/logs", "attempt")]["anyOf"][0]
    assert since["maximum"] == int64 and attempt["maximum"] == int64
    assert params[("/jobs/{job_id}/logs", "tail")]["maximum"] == 100_000


def test_requeue_fields_take_what_the_job_spec_takes(document):
    spec = JobSpec.model_json_schema()["properties"]
    requeue = document["components"]["schemas"]["RequeueRequest"]
    assert requeue["additionalProperties"] is False and set(requeue["properties"]) == set(REQUEUE_FIELDS)
    ignore = {"default", "title", "description"}
    for name in REQUEUE_FIELDS:
        spec_branches = [b for b in spec[name].get("anyOf", [spec[name]]) if b.get("type") != "null"]
        mine = [b for b in requeue["properties"][name]["anyOf"] if b.get("type") != "null"]
        strip = [{k: v for k, v in b.items() if k not in ignore} for b in spec_branches]
        assert mine == strip, name
    assert RequeueRequest.model_validate({"cutoff_len": 8}).cutoff_len == 8
    with pytest.raises(ValueError):
        RequeueRequest.model_validate({"per_device_train_batch_size": 2**64})


def test_post_jobs_has_a_working_example_and_links_to_the_job(document):
    post = document["paths"]["/jobs"]["post"]
    example = post["requestBody"]["content"]["application/json"]["examples"]["tiny"]["value"]
    assert example == EXAMPLE_JOB and JobSpec.model_validate(example).gpus == 0
    links = post["responses"]["201"]["links"]
    ids = {op["operationId"] for _, _, op in operations(document)}
    assert (
        {link["operationId"] for link in links.values()}
        == {
            "get_job",
            "cancel_job",
            "requeue_job",
            "get_metrics",
            "get_logs",
        }
        <= ids
    )
    assert all(link["parameters"] == {"job_id": "$response.body#/id"} for link in links.values())


def test_the_docs_pages_and_their_assets_are_served_from_here(client):
    for page in ("/docs", "/redoc"):
        response = client.get(page)  # public: no token
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        html = response.text
        assert "cdn" not in html.lower() and "googleapis" not in html, page
        assert not re.findall(r"(?:src|href)=[\"']?(?:https?:)?//", html), page
        assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", html)
        assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
    assert "validatorUrl" in client.get("/docs").text  # no badge fetched from validator.swagger.io


def test_a_parameter_out_of_range_names_it_and_the_range():
    error = {"type": "less_than_equal", "loc": ("path", "job_id"), "msg": "...", "input": "9" * 20}
    described = describe_error(error, {"job_id": "an integer from 1 to 9223372036854775807"})
    assert described == {
        "field": "job_id",
        "message": f"job_id must be an integer from 1 to 9223372036854775807; got '{'9' * 20}'",
    }


def sqlalchemy_error(message: str) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("INSERT INTO jobs ...", {}, sqlite3.OperationalError(message))


def test_a_full_disk_is_507_a_locked_database_503_and_the_rest_is_not_ours_to_name():
    status, detail = storage_problem(sqlalchemy_error("database or disk is full"), "/var/lib/ftq")
    assert status == 507 and "disk is full" in detail and "/var/lib/ftq" in detail
    status, detail = storage_problem(OSError(errno.ENOSPC, "No space left on device", "/data/runs/x"), "/data")
    assert status == 507 and "/data/runs/x" in detail
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("could not write") from exc
    except RuntimeError as wrapped:
        assert storage_problem(wrapped, "/data")[0] == 507  # found through the chain
    assert storage_problem(sqlalchemy_error("database is locked"), "/data")[0] == 503
    assert storage_problem(sqlalchemy_error("no such table: jobs"), "/data") is None
    assert storage_problem(OSError(errno.EACCES, "Permission denied"), "/data") is None


def test_unexpected_failures_answer_json_never_plain_text(caplog):
    app = create_app(Settings())

    @app.get("/boom-disk")
    def boom_disk() -> None:
        raise sqlalchemy_error("database or disk is full")

    @app.get("/boom-locked")
    def boom_locked() -> None:
        raise sqlalchemy_error("database is locked")

    @app.get("/boom")
    def boom() -> None:
        raise ZeroDivisionError("no")

    client = TestClient(app, base_url="http://localhost", raise_server_exceptions=False)
    disk = client.get("/boom-disk")
    assert disk.status_code == 507 and "disk is full" in disk.json()["detail"]
    locked = client.get("/boom-locked")
    assert locked.status_code == 503 and locked.headers["retry-after"] == "1"
    other = client.get("/boom")
    assert other.status_code == 500 and other.headers["content-type"] == "application/json"
    assert "ZeroDivisionError" in other.json()["detail"] and "log" in other.json()["detail"]
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert logged and "GET /boom failed" in logged[0].getMessage()  # with its traceback
    unknown = client.get("/nope")
    assert unknown.status_code == 404 and "/docs" in unknown.json()["detail"]
