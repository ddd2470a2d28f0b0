"""The dashboard past the first thousand, in a real browser against a real daemon: 1,006 jobs shown the newest
first with their number and a pager, and a job of 100,000 records whose chart reaches its last step."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_dashboard import dashboard
from tests.helpers import tiny_spec
from tests.integration.daemon import standin_daemon
from tests.integration.many_jobs import fill_jobs

pytestmark = [pytest.mark.browser, pytest.mark.integration]

JOBS = 1006
RECORDS = 100_000


def test_the_newest_of_1006_jobs_the_total_and_a_chart_of_100000_records(browser: Browser, tmp_path: Path) -> None:
    fill_jobs(tmp_path / "ftq", JOBS, records_of_last=RECORDS)
    with standin_daemon(tmp_path / "ftq") as daemon:
        with dashboard(browser, daemon) as page:
            expect(page.locator('tr[data-job="1006"]')).to_contain_text("job-1006")
            expect(page.locator("tbody tr").first).to_have_attribute("data-job", "1006")  # the newest on top
            expect(page.locator("[data-total]")).to_have_text("1,006 jobs")
            expect(page.locator(".pager .showing")).to_have_text("showing 1–100, newest first")
            expect(page.locator("tbody tr")).to_have_count(100)
            # The oldest, eleven pages on: the pager reaches every job.
            for _ in range(10):
                page.click('[data-page="older"]')
            expect(page.locator(".pager .showing")).to_have_text("showing 1,001–1,006, newest first")
            expect(page.locator("tbody tr")).to_have_count(6)
            expect(page.locator('tr[data-job="1"]')).to_contain_text("job-1")
            expect(page.locator('[data-page="older"]')).to_be_disabled()
            page.click('[data-page="newer"]')
            expect(page.locator(".pager .showing")).to_have_text("showing 901–1,000, newest first")
            # A job submitted now: on the first page, at the top, with the total one more.
            page.reload()
            expect(page.locator(".pager .showing")).to_have_text("showing 1–100, newest first")
            late = daemon.submit(tiny_spec(name="cs-late", gpus=0, max_steps=5))
            expect(page.locator("tbody tr").first).to_have_attribute("data-job", str(late["id"]))
            expect(page.locator("[data-total]")).to_have_text("1,007 jobs")
        with dashboard(browser, daemon, f"#/jobs/{JOBS}") as page:
            chart = page.locator('[data-chart="loss"]')
            expect(chart).to_have_attribute("data-last", str(RECORDS))  # the last step, not the 10,000th
            points = int(chart.get_attribute("data-points") or 0)
            assert 1000 < points <= 2000, points
            expect(page.locator('[data-fact="Progress"]')).to_contain_text(f"{RECORDS}/{RECORDS} steps")
