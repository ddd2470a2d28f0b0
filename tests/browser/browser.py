"""Debian's chromium driven by Playwright's Python API: the dashboard's browser tests and its screenshots.

Playwright's own browser downloads are not used: the machines this project runs on
have no internet, and Debian's chromium is one `apt-get install chromium` away.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path(os.environ.get("FTQ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing_browser() -> str | None:
    """Why the browser cannot start, as a sentence with the fix; None when it can."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return None
    return (
        f"the dashboard's browser tests need chromium at {CHROMIUM}, which is missing: "
        "install it with `apt-get install chromium` (Debian), or point FTQ_CHROMIUM at a chromium binary"
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    problem = missing_browser()
    if problem:
        raise RuntimeError(problem)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
