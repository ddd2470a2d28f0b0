"""Schemathesis over a real daemon's /openapi.json: no answer is a 5xx, and every answer is one the document describes.

Two phases, each bounded (FTQ_FUZZ_EXAMPLES, FTQ_FUZZ_SCENARIOS): every operation with positive and negative
inputs, then stateful sequences that follow the document's links from POST /jobs to the job it made (get, cancel,
requeue, metrics, logs). Each scenario starts with a real job, submitted from the document's own example of
POST /jobs (the shipped tiny model on a CPU slot), so the sequences reach jobs that exist, run and end.
Checks: not a server error, status code, content type and body conform to the document. Every request carries
the daemon's token (in place of the credentials schemathesis makes up for the bearer scheme), so the negative
inputs reach the routes; what the guard refuses is tested in tests/unit/test_guard.py and test_http_guard.py.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Flaky, Unsatisfiable
from hypothesis.stateful import Bundle, initialize
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.daemon import Daemon

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = int(os.environ.get("FTQ_FUZZ_EXAMPLES", "60"))  # per operation and mode (positive, negative)
SCENARIOS = int(os.environ.get("FTQ_FUZZ_SCENARIOS", "50"))


def fuzz_settings(max_examples: int, **more: Any) -> hypothesis.settings:
    """Generate only (no shrinking, which would make the time unbounded), by default the same inputs each run."""
    options: dict[str, Any] = {
        "max_examples": max_examples,
        "deadline": None,
        "database": None,
        "derandomize": not os.environ.get("FTQ_FUZZ_RANDOM"),  # FTQ_FUZZ_RANDOM=1: new inputs each run
        "phases": [Phase.generate],
        "suppress_health_check": list(HealthCheck),
    }
    return hypothesis.settings(**{**options, **more})


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("fuzz") / "ftq", fake_gpus="1x24GiB", cpu_slots="1", api_token=TOKEN)
    daemon.http.headers.update(AUTH)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.close()  # the fuzz leaves jobs running: this stops every worker they started too
        if os.environ.get("FTQ_FUZZ_LOG"):  # FTQ_FUZZ_LOG=N: the daemon log's last N characters
            print(daemon.log()[-int(os.environ["FTQ_FUZZ_LOG"]) :])


@pytest.fixture(scope="module")
def schema(fuzz_daemon: Daemon) -> Any:
    loaded = schemathesis.openapi.from_url(f"http://127.0.0.1:{fuzz_daemon.port}/openapi.json")
    loaded.config.generation.update(with_security_parameters=False)  # the token is ours, sent with every call
    return loaded


def is_stream(operation: Any) -> bool:
    """An event stream answers for as long as the client listens, longer than any fuzz call's timeout: its
    parameters, errors and messages are tested in tests/integration/test_events.py instead."""
    ok = operation.definition.raw.get("responses", {}).get("200", {})
    return "text/event-stream" in ok.get("content", {})


def describe(case: Any, exc: BaseException) -> str:
    return f"{case.operation.label}: {exc}\n    {case.as_curl_command(headers=AUTH)}"


def test_every_operation_answers_as_documented(schema, fuzz_daemon):
    ran: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if is_stream(operation):
            continue
        has_inputs = bool(operation.path_parameters or operation.query or operation.body)
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            if mode is schemathesis.GenerationMode.NEGATIVE and not has_inputs:
                continue  # nothing to make invalid

            @fuzz_settings(EXAMPLES)
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                ran[case.operation.label] += 1
                try:
                    response = case.call(headers=AUTH, timeout=60)
                    statuses[response.status_code] += 1
                    case.validate_response(response, checks=CHECKS)
                except (Exception, FailureGroup) as exc:  # every failure is collected, reported together at the end
                    failures.append(describe(case, exc))

            run()
    took = time.monotonic() - started
    print(f"\nfuzz: {sum(ran.values())} requests over {len(ran)} operations in {took:.0f} s; statuses {statuses}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
    assert len(ran) >= 10, ran  # every operation ran
    assert fuzz_daemon.http.get("/healthz").status_code == 200


def test_stateful_sequences_reach_real_jobs(schema, fuzz_daemon):
    post_jobs = schema["/jobs"]["POST"]
    example = post_jobs.definition.raw["requestBody"]["content"]["application/json"]["examples"]["tiny"]["value"]
    seen: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    scenarios = 0

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        @initialize(target=Bundle("catch_all"))
        def a_real_job(self) -> StepOutput:
            """Each scenario starts from a job made by the document's own example of POST /jobs."""
            case = post_jobs.Case(body=example, media_type="application/json")
            self.recorder.record_case(case=case)  # as schemathesis' own root steps do, so links can follow it
            step = StepInput.initial(case)
            self.control.record_step(step, self.recorder)
            return self.step(step)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": AUTH, "timeout": 60}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            seen[(case.operation.label, response.status_code)] += 1
            try:
                case.validate_response(response, checks=CHECKS, recorder=self.recorder)
            except (Exception, FailureGroup) as exc:  # collected, so one failure does not end the exploration
                failures.append(describe(case, exc))

        def teardown(self) -> None:
            nonlocal scenarios
            scenarios += 1
            super().teardown()

    started = time.monotonic()
    for _ in range(3):
        try:
            Workflow.run(settings=fuzz_settings(SCENARIOS - scenarios, stateful_step_count=8, derandomize=False))
        except (Flaky, Unsatisfiable):
            # The daemon's state differs between replays of a scenario (a job has moved on), which
            # Hypothesis reports as flaky generation; schemathesis' own runner takes it as the end of a suite.
            pass
        if scenarios >= SCENARIOS:
            break
    took = time.monotonic() - started
    print(f"\nstateful: {sum(seen.values())} requests in {scenarios} scenarios in {took:.0f} s: {dict(seen)}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
    # The links were followed to jobs that exist: their answers are 200s, not 404s.
    assert seen[("POST /jobs", 201)] >= scenarios >= SCENARIOS // 2
    followed = {label for (label, status) in seen if status == 200 and "{job_id}" in label}
    assert len(followed) >= 3, seen
