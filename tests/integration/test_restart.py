"""A daemon killed with -9 while jobs run: at start it settles every attempt before serving."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import Daemon, process_group_alive

pytestmark = pytest.mark.integration


def test_restart_settles_what_the_dead_daemon_left(daemon: Daemon):
    short = daemon.submit(tiny_spec(name="short", max_steps=6))["id"]
    long = daemon.submit(tiny_spec(name="long", max_steps=100_000))["id"]
    wait_for(lambda: daemon.metrics(long, kind="metric"), timeout=120, what="the long job to train")
    pids = {i: daemon.job(i)["attempts"][0]["pid"] for i in (short, long)}

    daemon.stop(signal.SIGKILL)
    # The short job's worker finishes while no daemon watches; the long one trains on.
    wait_for(lambda: not process_group_alive(pids[short]), timeout=120, what="the short worker to end")
    assert process_group_alive(pids[long])

    daemon.start()
    done, stopped = daemon.job(short), daemon.job(long)
    assert done["state"] == "succeeded", done
    assert daemon.metrics(short)[-1]["status"] == "succeeded"
    assert stopped["state"] == "failed" and "daemon restarted" in stopped["reason"]
    assert not process_group_alive(pids[long])
    assert [g["bound_job"] for g in daemon.http.get("/gpus").json()["gpus"]] == [None, None]
    # Every record the worker wrote is stored once, whether read before or after the restart.
    steps = [r["current_steps"] for r in daemon.metrics(short, kind="metric")]
    assert steps == sorted(set(steps)) and steps[-1] == 6
