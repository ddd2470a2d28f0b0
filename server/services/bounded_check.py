"""A spec's path checks in a thread of their own, waited for a bounded time: a stuck filesystem holds that
thread, not the request, and the answer names the path the check was on."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from server.services.errors import InvalidSpec, Unavailable, field_error
from worker.preflight.confine import show

# How long a request waits for the checks of its paths. Local disks answer in milliseconds; a model directory
# of a few hundred shards on a network filesystem in well under a second. Ten seconds says "stuck".
CHECK_TIMEOUT_S = 10.0
# Checks that may run at once. A check stuck on a filesystem keeps its thread (a blocked read cannot be
# interrupted); past this many, a request waits CHECK_TIMEOUT_S for a free one and is then told to come back,
# so that a hung mount cannot make the daemon pile up threads without end.
MAX_CHECKS = 16
_checks = threading.BoundedSemaphore(MAX_CHECKS)

T = TypeVar("T")


@dataclass
class Reading:
    """Which field's path the check is on, for the message when it takes too long."""

    field: str = "model_name_or_path"
    path: str = ""

    def at(self, field: str, path: str | os.PathLike[str]) -> None:
        self.field, self.path = field, os.fspath(path)


def bounded(check: Callable[[], T], timeout_s: float, reading: Reading) -> T:
    """`check()` in a thread of its own, waited for at most `timeout_s`; InvalidSpec names the path it was on.

    A plain daemon thread rather than an executor: an executor's threads are joined when the interpreter
    exits, and one stuck in a read on a hung mount would keep the daemon from ever exiting.
    """
    slots = _checks  # the one acquired is the one released, whatever happens to the name meanwhile
    if not slots.acquire(timeout=timeout_s):
        raise Unavailable(
            f"{MAX_CHECKS} earlier checks of spec paths are still waiting on the filesystem (a stuck network "
            "mount?); the job was not queued; try again later"
        )
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = check()
        except BaseException as exc:  # handed to the request's thread, which raises it
            outcome["error"] = exc
        finally:
            slots.release()
            done.set()

    threading.Thread(target=run, name="ftq-check-paths", daemon=True).start()
    if not done.wait(timeout_s):
        raise InvalidSpec.from_errors(
            [
                field_error(
                    reading.field,
                    f"reading {show(reading.path)} took longer than {timeout_s:g} s (a stuck network "
                    "filesystem?); the job was not queued",
                )
            ]
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
