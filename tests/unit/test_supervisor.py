"""Process-group handling on real (tiny) processes: no workers, no training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from scheduler.local.supervisor import group_alive, process_start_time, same_process, signal_group, worker_env
from tests.helpers import wait_for


def test_a_whole_group_is_signalled_and_then_gone():
    # A leader that leaves a child behind in its group, like a data loader worker.
    code = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        " time.sleep(60)"
    )
    leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        assert group_alive(leader.pid)
        assert same_process(leader.pid, process_start_time(leader.pid))
        assert signal_group(leader.pid, signal.SIGKILL)
        leader.wait(timeout=10)
        wait_for(lambda: not group_alive(leader.pid), timeout=10, what="the group to be gone")
        assert not signal_group(leader.pid, signal.SIGTERM)
    finally:
        if leader.poll() is None:
            leader.kill()


def test_a_reused_pid_is_not_taken_for_ours():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(proc.pid)
    proc.wait()
    assert not same_process(proc.pid, start)
    assert not same_process(proc.pid, None)


def test_a_worker_that_ended_but_is_not_reaped_yet_is_not_taken_for_live():
    # An adopted worker's parent is init, which may reap it late: a zombie has still ended.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        start = process_start_time(proc.pid)
        assert same_process(proc.pid, start)
        wait_for(lambda: not same_process(proc.pid, start), timeout=10, what="the child to end")
        assert process_start_time(proc.pid) == start  # still there, unreaped: a zombie
    finally:
        proc.wait(timeout=10)


def test_the_worker_sees_its_gpus_and_none_of_the_daemons_settings(monkeypatch):
    monkeypatch.setenv("FTQ_API_TOKEN", "secret")
    env = worker_env("1,3", cpu_threads=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["OMP_NUM_THREADS"] == "2" and env["PYTHONUNBUFFERED"] == "1"
    assert "FTQ_API_TOKEN" not in env


def test_the_worker_learns_its_input_dirs_and_the_remote_code_switch_as_the_daemon_resolved_them(monkeypatch):
    from worker.preflight.confine import input_dirs_from_env, remote_code_allowed, worker_settings

    monkeypatch.setenv("FTQ_INPUT_DIRS", "/somewhere/else")  # the daemon's own spelling does not reach the worker
    monkeypatch.setenv("FTQ_ALLOW_REMOTE_CODE", "1")
    env = worker_env("0", None, worker_settings(["/tmp"], allow_remote_code=False))
    assert input_dirs_from_env(env) == [os.path.realpath("/tmp")] and not remote_code_allowed(env)
    bare = worker_env("0", None)  # nothing given: nothing passed, so a worker started this way is told nothing
    assert "FTQ_INPUT_DIRS" not in bare and "FTQ_ALLOW_REMOTE_CODE" not in bare
