"""The dashboard of a daemon on a real Ray cluster, in a real browser: the GPU page by node, a job's node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_dashboard import dashboard
from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon

pytest.importorskip("ray", reason="the Ray tests need ray: pip install 'ftq[ray]'")

from tests.ray.cluster import ray_cluster  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.integration]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with ray_cluster(nodes=2, node_gpus="2x24GiB") as started:
        yield started


def test_the_gpu_page_shows_each_node_with_its_gpus_and_the_job_holding_one(
    browser: Browser, cluster: Any, tmp_path: Path
) -> None:
    daemon = Daemon(tmp_path / "ftq", ray_address=cluster.address).start(timeout=180)
    try:
        job = daemon.submit(tiny_spec(name="cs-on-ray", max_steps=100_000))
        wait_for(lambda: daemon.job(job["id"])["state"] == "running", timeout=180, what="the job to run")
        attempt = daemon.job(job["id"])["attempts"][0]
        view = daemon.http.get("/gpus").json()
        gpu_nodes = sorted({g["node"] for g in view["gpus"]})
        with dashboard(browser, daemon, "#/gpus") as page:
            for node in view["nodes"]:  # the head (no GPUs) and the two nodes
                section = page.locator(f'[data-node-section="{node["node"]}"]')
                expect(section).to_contain_text(f"node {node['node'][:8]}")
                expect(section).to_contain_text(node["state"])
                expect(section.locator(".gpu.card")).to_have_count(2 if node["node"] in gpu_nodes else 0)
            held = page.locator(f'[data-node="{attempt["node"]}"][data-gpu="{attempt["cuda_visible_devices"]}"]')
            expect(held).to_contain_text(f"job #{job['id']} cs-on-ray")
            page.goto(f"http://127.0.0.1:{daemon.port}/#/jobs/{job['id']}")
            expect(page.locator("body")).to_contain_text(f"node {attempt['node'][:8]}")
        assert daemon.http.post(f"/jobs/{job['id']}/cancel").status_code == 200
        wait_for(lambda: daemon.ended(job["id"]), timeout=60, what="the cancel")
    finally:
        daemon.stop()
        daemon.kill_workers()
