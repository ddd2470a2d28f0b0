"""The dashboard in a real browser (Debian's chromium) against a real daemon with real jobs.

What the page shows comes from the daemon's API and its event stream: the tests
compare it with what the daemon itself answers, and count the page's requests to
show that a chart grows from the stream, not from polling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon, standin_daemon

pytestmark = [pytest.mark.browser, pytest.mark.integration]

TIMEOUT_MS = 60_000


@contextmanager
def dashboard(
    browser: Browser, daemon: Daemon, route: str = "#/", requests: list[Request] | None = None
) -> Iterator[Page]:
    """A fresh tab on the daemon's dashboard (every URL it asks for goes to `requests`); fails the test if the
    page's own script raised."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if requests is not None:
        page.on("request", lambda request: requests.append(request))
    page.goto(f"http://127.0.0.1:{daemon.port}/{route}")
    try:
        yield page
        assert not errors, f"the dashboard's script raised: {errors}"
    finally:
        context.close()


def chart_points(page: Page, chart: str) -> int:
    return int(page.locator(f'[data-chart="{chart}"]').get_attribute("data-points") or 0)


def test_sse_parser_reads_events_split_anywhere(browser: Browser, tmp_path: Path) -> None:
    """The page's SSE reader: chunks that split a line or a CRLF, comments, multi-line data, the last id."""
    with standin_daemon(tmp_path / "ftq") as daemon, dashboard(browser, daemon) as page:
        got = page.evaluate(
            """async () => {
                const { SseParser } = await import("/ui/js/sse.js");
                const parser = new SseParser();
                const chunks = [": ping\\r", "\\nid: 7\\r\\nevent: state\\r\\nda", "ta: {\\"a\\":\\r\\ndata: 1}\\r",
                                "\\n\\r\\n", "id: 8\\nevent: metric\\ndata: {}\\n", "\\n"];
                return chunks.flatMap((c) => parser.feed(c));
            }"""
        )
    assert got == [
        {"id": "7", "event": "state", "data": '{"a":\n1}'},
        {"id": "8", "event": "metric", "data": "{}"},
    ]


def test_the_page_shows_the_daemons_jobs_and_their_wait_reasons(browser: Browser, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_S", "0.2")
    with standin_daemon(tmp_path / "ftq", fake_gpus="1x24GiB", cpu_slots="1") as daemon:
        done = daemon.submit(tiny_spec(name="cs-done", gpus=0, max_steps=3))
        wait_for(lambda: daemon.ended(done["id"]), what="the first job to end")
        running = daemon.submit(tiny_spec(name="cs-running", gpus=1, max_steps=10_000))
        busy = daemon.submit(tiny_spec(name="cs-cpu", gpus=0, max_steps=10_000))
        waiting = daemon.submit(tiny_spec(name="cs-waits", gpus=0, max_steps=10))
        wait_for(lambda: daemon.job(busy["id"])["state"] == "running", what="the CPU job to run")
        with dashboard(browser, daemon) as page:
            for job in (done, running, busy, waiting):
                row = page.locator(f'tr[data-job="{job["id"]}"]')
                expect(row).to_contain_text(job["name"])
                expect(row.locator(".badge")).to_have_text(daemon.job(job["id"])["state"])
            expect(page.locator(f'tr[data-job="{waiting["id"]}"] .col-note')).to_have_text(
                daemon.job(waiting["id"])["waiting"]
            )
            expect(page.locator(f'tr[data-job="{running["id"]}"] .col-gpus')).to_have_text("GPU 0")
            expect(page.locator(f'tr[data-job="{done["id"]}"] .spark')).to_have_attribute("data-points", "3")
            # The GPU map: the fake GPU, held by the running job.
            page.click('a[data-nav="gpus"]')
            expect(page.locator('[data-gpu="0"]')).to_contain_text(f"job #{running['id']} cs-running")
            # A job submitted elsewhere appears through the event stream, without a reload.
            page.click('a[data-nav="jobs"]')
            late = daemon.submit(tiny_spec(name="cs-late", gpus=0, max_steps=5))
            expect(page.locator(f'tr[data-job="{late["id"]}"]')).to_contain_text("cs-late")
            expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def test_a_chart_gains_points_from_the_event_stream_while_a_real_job_trains(browser: Browser, tmp_path: Path) -> None:
    """The tiny real model; the page reads the job's records once, and every later point comes as an event."""
    daemon = Daemon(tmp_path / "ftq", cpu_slots="1").start()
    try:
        job = daemon.submit(tiny_spec(name="cs-live", gpus=0, max_steps=150, logging_steps=2))
        requests: list[Request] = []
        with dashboard(browser, daemon, f"#/jobs/{job['id']}", requests) as page:
            page.wait_for_selector('[data-chart="loss"]')
            seen = {chart_points(page, "loss")}
            wait_for(lambda: seen.add(chart_points(page, "loss")) or daemon.ended(job["id"]), timeout=180)
            final = len(daemon.metrics(job["id"], kind="metric"))
            page.wait_for_function(
                f"() => document.querySelector('[data-chart=\"loss\"]').dataset.points === '{final}'"
            )
            seen.add(chart_points(page, "loss"))
            expect(page.locator("h1 .badge")).to_have_text("succeeded")
            assert len([s for s in seen if 0 < s < final]) >= 1, f"the chart never grew while training: {seen}"
            metric_reads = [r.url for r in requests if "/metrics" in r.url]
            assert len(metric_reads) == 1, f"the page polled the metrics: {metric_reads}"
            expect(page.locator('[data-chart="lr"]')).to_have_attribute("data-points", str(final))
            expect(page.locator("pre.log")).not_to_have_text("(no log yet)")
    finally:
        daemon.close()


def test_the_page_resumes_the_stream_after_a_daemon_restart_and_loses_no_record(
    browser: Browser, tmp_path: Path, monkeypatch
) -> None:
    """The reader reconnects with Last-Event-ID: what happened while the daemon was down still reaches the chart,
    with no second read of the records."""
    monkeypatch.setenv("STANDIN_STEP_S", "0.1")
    with standin_daemon(tmp_path / "ftq") as daemon:
        job = daemon.submit(tiny_spec(name="cs-restart", gpus=0, max_steps=120))
        requests: list[Request] = []
        with dashboard(browser, daemon, f"#/jobs/{job['id']}", requests) as page:
            expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            wait_for(lambda: chart_points(page, "loss") > 5, what="the first points")
            daemon.stop()
            expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
            daemon.start()  # the worker trained on meanwhile; the new daemon adopts it
            wait_for(lambda: daemon.ended(job["id"]), what="the job to end")
            final = len(daemon.metrics(job["id"], kind="metric"))
            assert final == 120
            expect(page.locator('[data-chart="loss"]')).to_have_attribute("data-points", str(final))
            expect(page.locator("h1 .badge")).to_have_text("succeeded")
            assert len([r for r in requests if "/metrics" in r.url]) == 1
            streams = [r for r in requests if r.url.endswith("/events")]
            assert "last-event-id" not in streams[0].headers  # the first read starts live
            cursors = [int(r.headers["last-event-id"]) for r in streams[1:]]
            assert cursors and all(c > 0 for c in cursors), [r.headers for r in streams]


def test_the_token_prompt_works_with_ftq_api_token(browser: Browser, tmp_path: Path) -> None:
    with standin_daemon(tmp_path / "ftq", api_token="s3cret-token") as daemon:
        headers = {"Authorization": "Bearer s3cret-token"}
        assert daemon.http.get("/jobs").status_code == 401
        response = daemon.http.post("/jobs", json=tiny_spec(name="cs-private", gpus=0, max_steps=3), headers=headers)
        assert response.status_code == 201, response.text
        with dashboard(browser, daemon) as page:
            dialog = page.locator("#token-dialog")
            expect(dialog).to_be_visible()
            expect(page.locator("#token-refused")).to_be_hidden()
            page.fill("#token-input", "wrong")
            page.click("#token-form button")
            expect(page.locator("#token-refused")).to_be_visible()
            page.fill("#token-input", "s3cret-token")
            page.click("#token-form button")
            expect(dialog).to_be_hidden()
            expect(page.locator("tr[data-job]")).to_contain_text("cs-private")
            expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            page.reload()  # the token is kept for the tab: no second prompt
            expect(page.locator("tr[data-job]")).to_contain_text("cs-private")
            expect(dialog).to_be_hidden()


def test_cancel_and_requeue_from_the_job_page(browser: Browser, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STANDIN_STEP_S", "0.1")
    with standin_daemon(tmp_path / "ftq") as daemon:
        job = daemon.submit(tiny_spec(name="cs-long", gpus=0, max_steps=100_000))
        wait_for(lambda: daemon.metrics(job["id"], kind="metric"), what="the job's first record")
        with dashboard(browser, daemon, f"#/jobs/{job['id']}") as page:
            page.get_by_role("button", name="Cancel").click()
            wait_for(lambda: daemon.job(job["id"])["state"] == "cancelled", what="the cancel")
            expect(page.locator("h1 .badge")).to_have_text("cancelled")
            page.get_by_role("button", name="Requeue").click()
            wait_for(lambda: len(daemon.job(job["id"])["attempts"]) == 2, what="the requeued attempt")
            expect(page.locator("table.attempts tbody tr")).to_have_count(2)
            expect(page.locator("h1 .badge")).to_have_text("running")
            # The second attempt's first records mark the restart on the curves.
            expect(page.locator('[data-chart="loss"]')).to_have_attribute("data-marks", "1")
            page.get_by_role("button", name="Cancel").click()
            wait_for(lambda: daemon.ended(job["id"]), what="the second cancel")


def test_the_compare_view_shows_the_table_and_the_curves(browser: Browser, tmp_path: Path) -> None:
    with standin_daemon(tmp_path / "ftq", cpu_slots="2") as daemon:
        jobs = [daemon.submit(tiny_spec(name=f"cs-{n}", gpus=0, max_steps=steps)) for n, steps in (("a", 8), ("b", 12))]
        for job in jobs:
            wait_for(lambda job=job: daemon.ended(job["id"]), what=f"job {job['id']} to end")
        ids = [job["id"] for job in jobs]
        expected = daemon.http.get("/compare", params={"ids": ids}).json()["data"]
        with dashboard(browser, daemon) as page:
            for job_id in ids:
                page.check(f'tr[data-job="{job_id}"] input[type="checkbox"]')
            page.get_by_role("button", name="Compare selected (2)").click()
            expect(page).to_have_url(f"http://127.0.0.1:{daemon.port}/#/compare?ids={ids[0]},{ids[1]}")
            rows = page.locator("table.compare tbody tr")
            expect(rows).to_have_count(2)
            for row, want in zip(rows.all(), expected, strict=True):
                expect(row).to_contain_text(want["name"])
                expect(row).to_contain_text(f"{want['steps']}/{want['total_steps']}")
                expect(row.locator("td").nth(3)).to_have_text(f"{want['final_loss']:.4g}")
            expect(page.locator('[data-chart="compare-loss"]')).to_have_attribute("data-points", "12")
