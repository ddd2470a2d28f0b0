"""configs/prometheus: promtool checks the rules and runs their unit tests (alerts_test.yml) where it is
installed (Debian's `prometheus` package), and every metric an alert reads is one GET /metrics writes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from server.metrics import families as f
from tests.prom_rules import ALERTS, PROMETHEUS_DIR, PROMETHEUS_OWN, metric_names, rules
from tests.unit.test_prom_families import NOW, _gpu, scrape

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_the_rules_and_the_scrape_config():
    for args in (("check", "rules", ALERTS.name), ("check", "config", "prometheus.yml")):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_rules_fire_as_their_unit_tests_say():
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def exposed_names() -> set[str]:
    """Every family and sample name the builders write, each family with a row that fills it."""
    rows = [
        f.JobRow(
            id=1, name="a", state="running", last_step=1, total_steps=2, loss=1.0, tokens_per_s=1.0,
            peak_memory_gib=1.0, attempts=1, last_record_at=NOW,
        ),
        f.JobRow(id=2, name="b", state="queued", queued_since=NOW),
    ]  # fmt: skip
    families = [
        f.jobs_by_state({}),
        f.attempts_by_outcome({}),
        *f.wait_histograms(f.observe([1.0], f.WAIT_BUCKETS), f.observe([1.0], f.WAIT_BUCKETS)),
        *f.job_families(rows, NOW),
        *f.gpu_families([_gpu(0, bound_job=1)]),
        *f.cpu_slot_families(1, 0),
        *f.daemon_families("0", []),
    ]
    got = scrape(families)
    empty = sorted(name for name, samples in got.items() if not samples)
    assert not empty, f"families without a sample in this check: {empty}; give them a row"
    return set(got) | {name for samples in got.values() for name, _, _ in samples}


def test_every_metric_an_alert_reads_is_one_that_metrics_writes():
    exposed = exposed_names()
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        unknown = used - exposed - PROMETHEUS_OWN
        assert not unknown, f"{rule['alert']} reads {sorted(unknown)}, which GET /metrics does not write"


def test_the_rule_reader_finds_names_and_skips_the_rest():
    expr = 'sum by (gpu) (rate(ftq_a_total{state="oom"}[5m])) / on(gpu) group_left(x) ftq_b > bool 1e3'
    assert metric_names(expr) == {"ftq_a_total", "ftq_b"}
