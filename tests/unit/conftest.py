"""Fixtures the unit tests share."""

from __future__ import annotations

import signal

import pytest


@pytest.fixture
def keep_signal_handlers():
    """launch() installs its own SIGTERM / SIGINT handlers: give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
