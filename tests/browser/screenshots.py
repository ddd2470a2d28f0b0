"""The README's dashboard screenshots: `python -m tests.browser.screenshots [OUTDIR]` (docs/screenshots by default).

It starts a daemon (real workers, the tiny model) on a temporary data dir, submits the
shipped demo jobs (configs/jobs, as `ftq demo` does) on CPU slots with a held-out 10% to
evaluate on, lets them train, and saves the jobs table while they run, a job page and
the compare view once they have ended.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from server.cli.demo import JOBS_DIR
from server.cli.main import load_spec
from tests.browser.browser import chromium
from tests.helpers import REPO
from tests.integration.daemon import Daemon

# On CPU slots, two at a time: the third job waits, and the table says why.
OVERRIDES = ["gpus=0", "val_size=0.1", "eval_strategy=steps", "eval_steps=16"]
VIEWPORT = {"width": 1280, "height": 760}
TABLE_VIEWPORT = {"width": 1280, "height": 330}


def wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def progress(job: dict[str, Any]) -> float:
    return float((job["progress"] or {}).get("percentage") or 0)


def settle(page: Page) -> None:
    """Let the last events land and the page redraw (it batches redraws every 150 ms)."""
    page.wait_for_timeout(1200)
    page.evaluate("document.getElementById('toasts').replaceChildren()")  # the alerts of jobs that ended


def main(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted((REPO / JOBS_DIR).glob("*.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp) / "ftq", cpu_slots="2").start()
        try:
            ids = [daemon.submit(load_spec(path, OVERRIDES))["id"] for path in files]
            with chromium() as browser:
                page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
                page.goto(f"http://127.0.0.1:{daemon.port}/#/")
                wait(lambda: any(progress(daemon.job(i)) > 40 for i in ids), 300, "a job to be under way")
                page.set_viewport_size(TABLE_VIEWPORT)  # the table is short: no empty page below it
                settle(page)
                page.screenshot(path=str(out_dir / "jobs.png"), full_page=True)
                page.set_viewport_size(VIEWPORT)
                wait(lambda: all(daemon.ended(i) for i in ids), 600, "the demo jobs to end")
                page.goto(f"http://127.0.0.1:{daemon.port}/#/jobs/{ids[0]}")
                settle(page)
                page.screenshot(path=str(out_dir / "job.png"), full_page=True)
                page.goto(f"http://127.0.0.1:{daemon.port}/#/compare?ids={','.join(map(str, ids))}")
                settle(page)
                page.screenshot(path=str(out_dir / "compare.png"), full_page=True)
        finally:
            daemon.close()
    for name in ("jobs", "job", "compare"):
        print(out_dir / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots"))
