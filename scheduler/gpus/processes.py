"""Which processes on a GPU are ours: the tree below our workers, read from /proc, and the GPU's others."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from scheduler.gpus.types import GpuInfo, GpuProcess
from worker.spec.process import PROC, read_stat


def foreign_processes(gpu: GpuInfo, our_pids: Iterable[int]) -> tuple[GpuProcess, ...]:
    """The processes on gpu that are not ours: their pid is not in our_pids.

    Pass every pid of our workers, children included: ``roots | descendant_pids(roots)``.
    """
    ours = set(our_pids)
    return tuple(p for p in gpu.processes if p.pid not in ours)


def descendant_pids(root_pids: Iterable[int], proc: str | os.PathLike[str] = PROC) -> set[int]:
    """Every process below root_pids (torchrun ranks, data loader workers ...), by /proc/PID/stat's ppid.

    The roots are not added for being roots: ours = ``roots | descendant_pids(roots)``. Empty
    where there is no /proc (macOS, Windows). One read of /proc per call, a few ms on a busy
    host; a process that starts or ends meanwhile may be missed.
    """
    return descendants_in(process_children(proc), root_pids)


def process_children(proc: str | os.PathLike[str] = PROC) -> dict[int, list[int]]:
    """ppid -> its children, from one read of /proc (empty where there is none)."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return {}
    children: dict[int, list[int]] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = read_stat(entry, proc)
        if stat is not None:  # None: gone since listdir, or hidden from us
            children.setdefault(stat.ppid, []).append(int(entry))
    return children


def descendants_in(children: Mapping[int, list[int]], root_pids: Iterable[int]) -> set[int]:
    """Every process below root_pids in a tree read by process_children (the roots not added for being roots)."""
    found: set[int] = set()
    todo = list(root_pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:  # pid 0 is the parent of pid 1 and 2, and it is nobody's child
                found.add(child)
                todo.append(child)
    return found
