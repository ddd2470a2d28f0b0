"""The browser tests' marker (registered here so they run under --strict-markers) and their daemons."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from tests.browser.browser import chromium, missing_browser


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the dashboard in Debian's chromium against a real daemon")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = missing_browser()
    if problem:
        pytest.fail(problem, pytrace=False)  # never a silent pass
    with chromium() as launched:
        yield launched
