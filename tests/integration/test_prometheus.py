"""GET /metrics of a real daemon, parsed with prometheus_client's own parser, agrees with GET /jobs and GET /gpus.

The stand-in worker (tests/integration/standin_worker.py) reports fast and, for `metered-*` jobs, what a GPU
worker adds (throughput, reserved memory); one test trains the tiny real model into a real OOM.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from server.db.engine import make_engine
from server.metrics.waits import WaitTally
from server.settings import Settings
from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.daemon import STANDIN_WORKER, Daemon
from tests.prom_rules import PROMETHEUS_OWN, metric_names, rules

pytestmark = pytest.mark.integration

GIB, MiB = 2**30, 2**20
TOKEN = "prometheus-scrapes-with-this"

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(d: Daemon) -> Samples:
    """Sample name -> (labels, value) of each sample of GET /metrics."""
    response = d.http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version="), response.headers
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        samples.setdefault(family.name, [])
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def one(samples: Samples, metric: str, **labels: str) -> float | None:
    """The value of the one sample of `metric` whose labels include `labels` (None when there is none)."""
    found = [value for have, value in samples.get(metric, []) if labels.items() <= have.items()]
    assert len(found) <= 1, f"{metric}{labels}: {found}"
    return found[0] if found else None


def by_job(samples: Samples, name: str) -> dict[int, float]:
    return {int(labels["id"]): value for labels, value in samples.get(name, [])}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """Stand-in workers on two fake 24 GiB GPUs and one CPU slot, behind a token, stalls shown after 2 s."""
    d = Daemon(
        tmp_path / "ftq", worker_module=STANDIN_WORKER, fake_gpus="2x24GiB", cpu_slots="1", api_token=TOKEN,
        stall_min_s="2",
    )  # fmt: skip
    d.env["PYTHONPATH"] = str(REPO)
    d.http.headers["authorization"] = f"Bearer {TOKEN}"
    d.start()
    try:
        yield d
    finally:
        d.close()


def test_metrics_need_the_token_like_every_route(daemon: Daemon):
    url = f"http://127.0.0.1:{daemon.port}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer not-the-token"}).status_code == 401
    assert httpx.get(url, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metrics_agree_with_jobs_and_gpus(daemon: Daemon):
    d = daemon
    empty = scrape(d)  # the first scrape reads every job's waits; the later ones only what changed since
    assert one(empty, "ftq_queue_wait_seconds_count") == 0 and one(empty, "ftq_jobs", state="queued") == 0
    done = d.submit(tiny_spec(name="metered-done", max_steps=5))["id"]
    wait_for(lambda: d.ended(done), timeout=60, what="the short job")
    long = d.submit(tiny_spec(name="metered-long", max_steps=100_000))["id"]
    cpu = d.submit(tiny_spec(name="on-cpu", gpus=0, max_steps=100_000))["id"]
    wide = d.submit(tiny_spec(name="wide", gpus=2, max_steps=5))["id"]  # one GPU is held: it waits
    for job_id in (long, cpu):
        wait_for(lambda j=job_id: (d.job(j)["progress"] or {}).get("current_steps", 0) > 3, what=f"{job_id} to run")
    got = scrape(d)
    jobs = {j["id"]: j for j in d.http.get("/jobs", params={"limit": 100}).json()["data"]}

    # jobs by state, every state
    states = {labels["state"]: value for labels, value in got["ftq_jobs"]}
    assert len(states) == 8 and sum(states.values()) == 4
    assert {s: n for s, n in states.items() if n} == {"succeeded": 1, "running": 2, "queued": 1}
    assert one(got, "ftq_attempts_total", outcome="succeeded") == 1
    assert one(got, "ftq_attempts_total", outcome="cancelled") == 0

    # per job: the finished one, whole
    finished = d.job(done)
    assert finished["state"] == "succeeded"
    assert one(got, "ftq_job_state", id=str(done), name="metered-done", state="succeeded") == 1
    assert by_job(got, "ftq_job_progress_ratio")[done] == 1.0
    assert by_job(got, "ftq_job_loss")[done] == pytest.approx(finished["loss"])
    assert by_job(got, "ftq_job_tokens_per_second")[done] == finished["latest_metrics"]["throughput"]
    assert by_job(got, "ftq_job_peak_memory_bytes")[done] == round(finished["attempts"][0]["peak_memory_gib"] * GIB)
    assert by_job(got, "ftq_job_attempts") == {done: 1, long: 1, cpu: 1, wide: 0}
    assert cpu not in by_job(got, "ftq_job_tokens_per_second")  # not metered: nothing known, nothing written

    # the running ones: how quiet, against their threshold; the queued one: how long it has waited
    assert set(by_job(got, "ftq_job_seconds_since_last_record")) == {long, cpu}
    assert by_job(got, "ftq_job_stall_threshold_seconds")[long] >= 2
    assert jobs[wide]["waiting"], jobs[wide]
    submitted = datetime.fromisoformat(jobs[wide]["submitted_at"].replace("Z", "+00:00"))
    waited = (datetime.now(timezone.utc) - submitted).total_seconds()
    assert 0 < by_job(got, "ftq_job_queued_seconds")[wide] <= waited
    assert set(by_job(got, "ftq_job_queued_seconds")) == {wide}

    # the histograms: one observation per job that started
    assert one(got, "ftq_queue_wait_seconds_count") == 3
    assert one(got, "ftq_submit_to_start_seconds_count") == 3
    assert one(got, "ftq_submit_to_start_seconds_bucket", le="+Inf") == 3
    assert 0 < one(got, "ftq_queue_wait_seconds_sum") <= one(got, "ftq_submit_to_start_seconds_sum")
    # what the daemon kept from scrape to scrape is what a full read of its database says, both ways
    engine = make_engine(Settings(data_dir=d.data_dir))
    try:
        for in_sql in (True, False):
            with Session(engine) as session:
                queue, start = WaitTally(in_sql=in_sql).update(session)
            for name, observed in (("ftq_queue_wait_seconds", queue), ("ftq_submit_to_start_seconds", start)):
                assert one(got, f"{name}_count") == observed.count == 3
                assert one(got, f"{name}_sum") == pytest.approx(observed.total, abs=0.01)
    finally:
        engine.dispose()

    # the GPUs, as GET /gpus sees them, and the CPU slot
    gpus = d.http.get("/gpus").json()
    for gpu in gpus["gpus"]:
        ids = {"gpu": str(gpu["index"]), "UUID": gpu["uuid"], "modelName": gpu["name"]}
        assert one(got, "DCGM_FI_DEV_FB_USED", **ids) == gpu["memory_used"] // MiB
        assert one(got, "DCGM_FI_DEV_FB_FREE", **ids) == gpu["memory_free"] // MiB
        assert one(got, "ftq_gpu_memory_total_bytes", **ids) == gpu["memory_total"]
        assert one(got, "ftq_gpu_memory_used_bytes", **ids) == gpu["memory_used"]
        assert one(got, "ftq_gpu_memory_free_bytes", **ids) == gpu["memory_free"]
    bound = {int(labels["gpu"]): int(labels["job_id"]) for labels, _ in got["ftq_gpu_bound_job"]}
    assert (
        bound
        == {g["index"]: g["bound_job"] for g in gpus["gpus"] if g["bound_job"] is not None}
        == {int(jobs[long]["cuda_visible_devices"]): long}
    )
    assert one(got, "ftq_cpu_slots_bound") == 1 == len(gpus["cpu_slots_bound"])
    assert one(got, "ftq_daemon_healthy") == 1 and one(got, "ftq_build_info") == 1

    # what the alerts read is all there
    for rule in rules():
        assert metric_names(rule["expr"]) - set(got) - PROMETHEUS_OWN == set(), rule["alert"]

    # a cancel: the attempt's outcome is counted, the job stays in the per-job series (ended within the hour)
    assert d.http.post(f"/jobs/{long}/cancel").status_code == 200
    wait_for(lambda: d.ended(long), timeout=60, what="the cancel")
    after = scrape(d)
    assert one(after, "ftq_attempts_total", outcome="cancelled") == 1
    assert one(after, "ftq_jobs", state="cancelled") == 1
    assert one(after, "ftq_job_state", id=str(long), state="cancelled") == 1
    assert long not in by_job(after, "ftq_job_seconds_since_last_record")


def test_a_stalled_worker_crosses_its_threshold_as_the_api_says(daemon: Daemon):
    d = daemon
    job_id = d.submit(tiny_spec(name="quiet", max_steps=100_000))["id"]
    wait_for(lambda: len(d.metrics(job_id, kind="metric")) > 20, timeout=60, what="the job to report")
    pid = d.job(job_id)["attempts"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: d.job(job_id)["stalled_for_s"], timeout=30, what="the API to show the stall")
        got = scrape(d)
        # FtqJobStalled's expression holds for this job, with the daemon's own threshold
        quiet, limit = (by_job(got, name)[job_id] for name in _STALL)
        assert quiet > limit >= 2, (quiet, limit)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: d.job(job_id)["stalled_for_s"] is None, timeout=30, what="the stall to clear")
    wait_for(lambda: _quiet_below_limit(scrape(d), job_id), timeout=30, what="/metrics to show it cleared")


def _quiet_below_limit(got: Samples, job_id: int) -> bool:
    quiet, limit = (by_job(got, name)[job_id] for name in _STALL)
    return quiet < limit


_STALL = ("ftq_job_seconds_since_last_record", "ftq_job_stall_threshold_seconds")


def test_a_real_oom_with_no_retry_left_is_what_the_oom_alert_reads(tmp_path: Path):
    d = Daemon(tmp_path / "ftq", cpu_slots="1", fault="oom@step:3").start()
    try:
        spec = tiny_spec(name="cs-oom", gpus=0, oom_retry=0, max_steps=10, logging_steps=1, save_steps=100)
        job_id = d.submit(spec)["id"]
        job = wait_for(lambda: d.ended(job_id), timeout=300, interval=0.5, what="the job to run out of memory")
        assert job["state"] == "oom", job
        got = scrape(d)
    finally:
        d.close()
    assert one(got, "ftq_job_state", id=str(job_id), name="cs-oom", state="oom") == 1  # FtqOomRetriesExhausted
    assert one(got, "ftq_attempts_total", outcome="oom") == 1
    assert one(got, "ftq_jobs", state="oom") == 1
    latest: dict[str, Any] = job["latest_metrics"]
    assert by_job(got, "ftq_job_tokens_per_second")[job_id] == latest["throughput"] > 0  # the real worker's
    assert by_job(got, "ftq_job_loss")[job_id] == pytest.approx(latest["loss"])
    assert job_id not in by_job(got, "ftq_job_peak_memory_bytes")  # on CPU no GPU memory is known: none written
