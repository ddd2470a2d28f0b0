"""The workers of one machine: spawn, release, poll, tail, signal and settle them.

The half of supervision that must run where the processes are. The local
executor holds one in the daemon's own process; on a Ray cluster every node's
agent (scheduler.ray.agent) holds one, and the daemon calls it remotely. So
everything crosses as plain, picklable data (paths as `str`), and what the
database must say (offsets, states) stays the daemon's: `progress` reads from
the offsets the daemon asks for, so a record is stored once however often the
daemon or an agent restarts.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.gpus.processes import descendants_in, process_children
from scheduler.local.supervisor import (
    WorkerProcess,
    group_alive,
    kill_leftovers,
    process_start_time,
    release,
    same_process,
    signal_group,
    spawn_worker,
    wait_until,
)
from scheduler.local.tail import last_end, last_end_before, last_lines, read_records
from worker.spec.gate import read_pid_file
from worker.spec.layout import LOG_FILE, METRICS_FILE, pid_files_in

LOG_TAIL_LINES = 30
DESCENDANTS_EVERY_S = 2.0


@dataclass(frozen=True)
class Progress:
    """What one poll tells of one attempt's worker."""

    records: list[dict[str, Any]]  # new metrics.jsonl records from the offset asked
    offset: int  # the offset they reach
    ended: bool  # the worker (its group leader) has ended
    exit_code: int | None  # None while it runs, or when it is not ours to know (adopted)
    log_tail: str = ""  # the log's last lines, once ended
    # Once ended: its `end` record, from the new records, or from those just before the offset asked when the
    # exit code is unknown (an adopted worker whose end an earlier daemon stored).
    end: dict[str, Any] | None = None
    lost: str | None = None  # the worker's node left the cluster (set by the Ray executor): why, in words
    more: bool = False  # whole lines are left past `offset` (the read was bounded): ask again at once


@dataclass(frozen=True)
class WorkerStart:
    """What starting one worker on a node takes; one object, so the executors and the agent pass it along whole.

    `daemon_settings`: what the worker must obey (worker.preflight.confine), given on every start, as the
    worker module is: a Ray agent outlives the daemon that created it. `extra_env`, `log_name`: a gang's node
    part (scheduler.local.supervisor.spawn_worker).
    """

    attempt_id: int
    run_dir: str
    spec: dict[str, Any]
    cuda_visible_devices: str
    cpu_threads: int | None
    worker_module: str = "worker"
    daemon_settings: Mapping[str, str] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    log_name: str = LOG_FILE


@dataclass
class _Worker:
    proc: WorkerProcess
    log_name: str = LOG_FILE
    # Processes the worker started outside its own group (torchrun and its ranks), pid -> start time,
    # so that none of them outlives the attempt.
    descendants: dict[int, int | None] = field(default_factory=dict)


class NodeSupervisor:
    """Every worker this machine runs for the daemon, by attempt id."""

    def __init__(
        self, on_exit: Callable[[], None] | None = None, spawn: Callable[..., WorkerProcess] = spawn_worker
    ) -> None:
        self._on_exit = on_exit
        self._spawn = spawn
        self._workers: dict[int, _Worker] = {}
        self._descendants_seen_at = 0.0
        self._lock = threading.Lock()  # an agent serves calls from several threads

    def start_worker(self, start: WorkerStart) -> tuple[int, int | None]:
        """Start the worker at its gate (it trains nothing until `release`); (pid, start time)."""
        proc = self._spawn(
            start.attempt_id,
            Path(start.run_dir),
            start.spec,
            start.cuda_visible_devices,
            start.cpu_threads,
            start.worker_module,
            daemon_settings=dict(start.daemon_settings),
            extra_env=dict(start.extra_env),
            log_name=start.log_name,
        )
        with self._lock:
            self._workers[start.attempt_id] = _Worker(proc, start.log_name)
        if proc.popen is not None and self._on_exit is not None:
            threading.Thread(target=self._wait_exit, args=(proc,), daemon=True).start()
        return proc.pid, proc.start_time

    def release(self, attempt_id: int) -> bool:
        worker = self._workers.get(attempt_id)
        return worker is not None and release(worker.proc)

    def adopt_worker(
        self, attempt_id: int, run_dir: str, pid: int, start_time: int | None, log_name: str = LOG_FILE
    ) -> bool:
        """Take on a worker that an earlier daemon (or agent) started; False when it has ended already.

        It is kept either way: the next `progress` reports an ended one with its last records and end.
        """
        with self._lock:
            if attempt_id not in self._workers:
                self._workers[attempt_id] = _Worker(WorkerProcess(attempt_id, pid, Path(run_dir), start_time), log_name)
        return same_process(pid, start_time)

    def stop_unstarted_in(self, run_dir: str) -> None:
        """Stop a worker whose pid the daemon never stored (so it was never told to go), if it is still there.

        Every node of a job across nodes writes its own pid file (worker.spec.layout.pid_file): each is looked
        at, and only a process alive here with the same start time is taken for the one it names.
        """
        for path in pid_files_in(Path(run_dir)):
            found = read_pid_file(Path(run_dir), path.name)
            if found is not None and same_process(*found):
                signal_group(found[0], signal.SIGKILL)
                wait_until(lambda found=found: not same_process(*found), timeout=5.0)

    def progress(self, offsets: Mapping[int, int]) -> dict[int, Progress]:
        """For each attempt asked about that runs here: its new records and whether it has ended.

        Whether it ended is read before its records, so an ended worker's last records are in the answer. The
        records are one bounded read (scheduler.local.tail): a worker is said to have ended only once its file
        is read to its end, so a backlog of any size is read whole, a bounded part per call, before its reaping.
        """
        now = time.monotonic()
        scan = now - self._descendants_seen_at >= DESCENDANTS_EVERY_S
        children = process_children() if scan else {}
        if scan:
            self._descendants_seen_at = now
        answer: dict[int, Progress] = {}
        for attempt_id, offset in offsets.items():
            worker = self._workers.get(attempt_id)
            if worker is None:
                continue
            ended, exit_code = worker.proc.poll()
            metrics = worker.proc.run_dir / METRICS_FILE
            read = read_records(metrics, offset)
            if ended and not read.more:
                # Its end is looked for before the offset only when neither the exit code nor the new records
                # tell how the run ended: a worker adopted after a restart, whose end may have been stored before.
                end = last_end(read.records)
                if end is None and exit_code is None:
                    end = last_end_before(metrics, offset)
                tail = last_lines(worker.proc.run_dir / worker.log_name, LOG_TAIL_LINES)
                answer[attempt_id] = Progress(read.records, read.offset, True, exit_code, tail, end)
                continue
            if children and not ended:
                for pid in descendants_in(children, {worker.proc.pid}):
                    worker.descendants.setdefault(pid, process_start_time(pid))
            answer[attempt_id] = Progress(read.records, read.offset, False, None, more=read.more)
        return answer

    def signal(self, attempt_id: int, sig: int) -> bool:
        worker = self._workers.get(attempt_id)
        return worker is not None and signal_group(worker.proc.pid, sig)

    def settle(self, attempt_id: int) -> None:
        """SIGKILL whatever the attempt left (its group: data loader workers, torchrun, ranks), then forget it."""
        with self._lock:
            worker = self._workers.pop(attempt_id, None)
        if worker is None:
            return
        pid = worker.proc.pid
        if group_alive(pid):
            signal_group(pid, signal.SIGKILL)
            wait_until(lambda: not group_alive(pid), timeout=5.0)
        if worker.proc.popen is not None:
            worker.proc.popen.poll()  # reap it, so no zombie is left behind
        kill_leftovers(worker.descendants)

    def attempt_ids(self) -> list[int]:
        return list(self._workers)

    def pids(self) -> dict[int, int]:
        """attempt id -> worker pid."""
        return {attempt_id: w.proc.pid for attempt_id, w in self._workers.items()}

    def _wait_exit(self, proc: WorkerProcess) -> None:
        if proc.popen is not None:
            proc.popen.wait()
            if self._on_exit is not None:
                self._on_exit()
