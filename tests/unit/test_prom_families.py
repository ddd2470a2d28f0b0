"""server.metrics.families: GET /metrics' families from plain rows, rendered and parsed as Prometheus reads them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from server.db.models import GpuPublic
from server.metrics import families as f

GIB = 2**30
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


class _Fixed:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def scrape(families: Iterable[Metric]) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """The families through the text format and prometheus_client's parser: family name -> samples."""
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    text = generate_latest(registry).decode()
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def values(samples: list[tuple[str, dict[str, str], float]], key: str = "id") -> dict[str, float]:
    return {labels[key]: value for _, labels, value in samples}


def test_every_state_and_every_outcome_is_there_with_zeros():
    got = scrape([f.jobs_by_state({"running": 2, "queued": 5}), f.attempts_by_outcome({"oom": 3})])
    assert values(got["ftq_jobs"], "state") == {
        "queued": 5, "starting": 0, "running": 2, "succeeded": 0, "failed": 0, "oom": 0, "cancelling": 0,
        "cancelled": 0,
    }  # fmt: skip
    assert {name for name, _, _ in got["ftq_attempts"]} == {"ftq_attempts_total"}
    assert values(got["ftq_attempts"], "outcome") == {"succeeded": 0, "failed": 0, "oom": 3, "cancelled": 0}


def test_a_histogram_of_rows_counts_each_bucket_cumulatively():
    observed = f.observe([0.5, 3, 3, 70, 100_000, -2], (1.0, 5.0, 60.0))
    assert observed == f.Observed((2, 4, 4), 6, 0.5 + 3 + 3 + 70 + 100_000)
    got = scrape([f.histogram("ftq_x_seconds", "x", observed, (1.0, 5.0, 60.0))])
    samples = got["ftq_x_seconds"]
    buckets = {labels["le"]: value for name, labels, value in samples if name.endswith("_bucket")}
    assert buckets == {"1.0": 2, "5.0": 4, "60.0": 4, "+Inf": 6}  # -2 (a clock step) counts as 0
    total = {name: value for name, _, value in samples if not name.endswith("_bucket")}
    assert total == {"ftq_x_seconds_count": 6, "ftq_x_seconds_sum": 0.5 + 3 + 3 + 70 + 100_000}


def test_the_wait_histograms_share_buckets_from_a_second_to_a_day():
    got = scrape(f.wait_histograms(f.observe([2.0], f.WAIT_BUCKETS), f.observe([7.0, 9.0], f.WAIT_BUCKETS)))
    assert set(got) == {"ftq_queue_wait_seconds", "ftq_submit_to_start_seconds"}
    les = [labels["le"] for name, labels, _ in got["ftq_queue_wait_seconds"] if name.endswith("_bucket")]
    assert les[0] == "1.0" and les[-2] == "86400.0" and les[-1] == "+Inf"
    assert ("ftq_submit_to_start_seconds_count", {}, 2.0) in got["ftq_submit_to_start_seconds"]


def test_per_job_series_say_what_is_known_and_leave_out_what_is_not():
    running = f.JobRow(
        id=1, name="cs-billing", state="running", last_step=30, total_steps=120, loss=0.75, tokens_per_s=4321.5,
        peak_memory_gib=17.25, attempts=2, oom_retries=1, last_record_at=NOW - timedelta(seconds=42),
        record_interval_s=20.0,
    )  # fmt: skip
    fresh = f.JobRow(id=2, name="new", state="running", attempts=1, last_record_at=NOW - timedelta(seconds=5))
    queued = f.JobRow(id=3, name="big", state="queued", queued_since=NOW - timedelta(minutes=31))
    done = f.JobRow(id=4, name="done", state="succeeded", last_step=60, total_steps=60, loss=0.1, attempts=1)
    got = scrape(f.job_families([running, fresh, queued, done], NOW, f.StallRule(factor=5, min_s=60)))

    assert {labels["id"]: labels["state"] for _, labels, _ in got["ftq_job_state"]} == {
        "1": "running", "2": "running", "3": "queued", "4": "succeeded",
    }  # fmt: skip
    assert values(got["ftq_job_progress_ratio"]) == {"1": 0.25, "4": 1.0}
    assert values(got["ftq_job_loss"]) == {"1": 0.75, "4": 0.1}  # no loss yet: no series, never 0
    assert values(got["ftq_job_tokens_per_second"]) == {"1": 4321.5}
    assert values(got["ftq_job_peak_memory_bytes"]) == {"1": 17.25 * GIB}
    assert values(got["ftq_job_attempts"]) == {"1": 2, "2": 1, "3": 0, "4": 1}
    assert values(got["ftq_job_oom_retries"])["1"] == 1
    assert values(got["ftq_job_seconds_since_last_record"]) == {"1": 42.0, "2": 5.0}
    # 5 x 20 s = 100 s; a job without a rhythm yet waits ten times FTQ_STALL_MIN_S (server.services.health)
    assert values(got["ftq_job_stall_threshold_seconds"]) == {"1": 100.0, "2": 600.0}
    assert values(got["ftq_job_queued_seconds"]) == {"3": 31 * 60.0}
    assert got["ftq_job_loss"][0][1] == {"id": "1", "name": "cs-billing"}


def test_a_job_name_any_text_survives_the_format():
    odd = 'cs "billing"\\ né\nx'
    got = scrape(f.job_families([f.JobRow(id=5, name=odd, state="queued")], NOW))
    assert got["ftq_job_state"][0][1] == {"id": "5", "name": odd, "state": "queued"}


def _gpu(index: int, **fields: object) -> GpuPublic:
    base: dict[str, object] = dict(
        uuid=f"GPU-{index}", index=index, name="NVIDIA H100 80GB HBM3", memory_total=80 * GIB,
        memory_free=60 * GIB, memory_used=20 * GIB + 5, utilization=87, pci_bus_id=f"00000000:0{index}:00.0",
        processes=[{"pid": 10, "foreign": False}, {"pid": 11, "foreign": True}], healthy=True, error=None,
        bound_job=None,
    )  # fmt: skip
    return GpuPublic.model_validate({**base, **fields})


def test_gpus_read_like_dcgm_exporter_and_in_bytes():
    got = scrape(
        f.gpu_families(
            [
                _gpu(0, bound_job=7),
                _gpu(1, memory_used=None, memory_free=None, memory_total=None, utilization=None, healthy=False),
            ]
        )
    )
    labels0 = {
        "gpu": "0", "UUID": "GPU-0", "device": "nvidia0", "modelName": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": "00000000:00:00.0",
    }  # fmt: skip
    assert got["DCGM_FI_DEV_FB_USED"] == [("DCGM_FI_DEV_FB_USED", labels0, 20 * 1024)]  # MiB, as DCGM
    assert got["DCGM_FI_DEV_FB_FREE"] == [("DCGM_FI_DEV_FB_FREE", labels0, 60 * 1024)]
    assert got["DCGM_FI_DEV_GPU_UTIL"] == [("DCGM_FI_DEV_GPU_UTIL", labels0, 87)]
    assert values(got["ftq_gpu_memory_used_bytes"], "gpu") == {"0": 20 * GIB + 5}  # GPU 1's None: left out
    assert values(got["ftq_gpu_memory_free_bytes"], "gpu") == {"0": 60 * GIB}
    assert values(got["ftq_gpu_memory_total_bytes"], "gpu") == {"0": 80 * GIB}
    assert values(got["ftq_gpu_healthy"], "gpu") == {"0": 1, "1": 0}
    assert values(got["ftq_gpu_foreign_processes"], "gpu") == {"0": 1, "1": 1}
    assert got["ftq_gpu_bound_job"] == [("ftq_gpu_bound_job", {**labels0, "job_id": "7"}, 1)]  # GPU 1 free: none


def test_the_daemon_says_its_version_and_health():
    got = scrape([*f.daemon_families("0.1.0", []), *f.cpu_slot_families(2, 1)])
    assert got["ftq_build_info"] == [("ftq_build_info", {"version": "0.1.0"}, 1)]
    assert got["ftq_daemon_healthy"][0][2] == 1
    assert (got["ftq_cpu_slots"][0][2], got["ftq_cpu_slots_bound"][0][2]) == (2, 1)
    assert scrape(f.daemon_families("0.1.0", ["the disk is full"]))["ftq_daemon_healthy"][0][2] == 0
