"""The /gpus view: holders, foreign processes, links."""

from __future__ import annotations

import os

from scheduler.gpus.fake import FakeProbe
from scheduler.gpus.types import GpuProcess
from server.services.machine import Machine, gpus_view


def test_foreign_processes_are_marked_and_links_shown():
    probe = FakeProbe("2x24GiB@nvlink2")
    probe.set(0, processes=(GpuProcess(os.getpid(), 1 << 30), GpuProcess(999_999, 2 << 30, "jupyter")))
    machine = Machine(probe.snapshot(), {probe.snapshot()[0].uuid: 7}, 1, 0, probe.topology())
    first, second = gpus_view(machine, worker_pids={os.getpid()})
    assert first.bound_job == 7 and second.bound_job is None
    assert [(p["pid"], p["foreign"]) for p in first.processes] == [(os.getpid(), False), (999_999, True)]
    assert first.links == {1: 0} and second.links == {0: 0}
