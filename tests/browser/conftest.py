"""The browser tests' browser (the `browser` marker is registered in pyproject.toml)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from tests.browser.browser import chromium, missing_browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = missing_browser()
    if problem:
        pytest.fail(problem, pytrace=False)  # never a silent pass
    with chromium() as launched:
        yield launched
