"""One attempt of the recipe: where it stands (rank, sink, trainer), its start and end records, and how it ended.

Every way out of worker.run.recipe leaves one `end` record (or, under torchrun, the
rank's report for the launcher, worker.launch.rank_report) with an exit code from
worker.spec.exits, so the daemon never has to parse the log.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.data.pipeline import DataError
from worker.launch.oom import exception_chain, exception_is_oom, tried_to_allocate_bytes
from worker.launch.rank_report import rank_report_path, write_rank_report
from worker.outputs.reporting import tensorboard_dir
from worker.preflight.confine import BadFile, Roots, input_dirs_from_env
from worker.run.cancel import CancelFlag, Cancelled
from worker.run.checkpoints import Checkpoint, ResumePlan
from worker.run.resume import ResumingTrainer
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OOM
from worker.spec.layout import METRICS_FILE
from worker.spec.methods import MethodError
from worker.spec.records import MetricsSink, NullSink, hms, make_record, utc_timestamp
from worker.spec.units import GIB

log = logging.getLogger("worker")


@dataclass
class Attempt:
    """What every stage of the recipe shares: this process's place in the run, and the trainer once there is one."""

    run_dir: Path
    rank: int  # under torchrun (worker.launch.torchrun) every rank runs the recipe; rank 0 alone writes metrics
    world_size: int
    report_path: Path | None  # where this rank reports to the launcher; None: it writes the end record itself
    roots: Roots  # every file the job reads must lie inside these (None: run by hand)
    sink: MetricsSink | NullSink
    cuda: bool
    started: float = field(default_factory=time.monotonic)
    trainer: ResumingTrainer | None = None

    @classmethod
    def here(cls, run_dir: Path, env: Mapping[str, str] = os.environ) -> Attempt:
        started = time.monotonic()
        rank = int(env.get("RANK", "0"))
        return cls(
            run_dir,
            rank=rank,
            world_size=int(env.get("WORLD_SIZE", "1")),
            report_path=rank_report_path(env),
            roots=input_dirs_from_env(env),
            sink=MetricsSink(run_dir / METRICS_FILE) if rank == 0 else NullSink(),
            cuda=torch.cuda.is_available(),
            started=started,
        )

    def end(self, status: str, code: int, **fields: Any) -> int:
        """Write the end record (or this rank's report), close the sink, and return the exit code."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the end record must not be cut in half
        state = self.trainer.state if self.trainer is not None else None
        events = tensorboard_dir(self.run_dir)
        cuda = self.cuda
        record = make_record(
            "end",
            dict(
                status=status,
                current_steps=state.global_step if state else 0,
                total_steps=state.max_steps if state and state.max_steps else None,
                elapsed_time=hms(time.monotonic() - self.started),
                peak_vram_reserved=round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
                peak_vram_allocated=round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
                peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
                **token_counts(self.trainer),
                # whatever the run's end: what it logged for TensorBoard so far is there (report_to: tensorboard)
                tensorboard_dir=str(events.resolve()) if events.is_dir() else None,
                **fields,
            ),
        )
        if self.report_path is not None:
            # The launcher writes the run's one end record from every rank's report: a rank that torchrun
            # stopped because another failed cannot tell that from a cancel, and rank 0 alone cannot say
            # that rank 1 ran out of memory.
            write_rank_report(self.report_path, {**record, "rank": self.rank, "exit_code": code})
        else:
            self.sink.write_record(record)
        self.sink.close()
        return code

    def start_record(self, resume: Checkpoint | None, plan: ResumePlan, **extra: Any) -> None:
        self.sink.write_record(  # written as it is: cuda_visible_devices is meaningful as null (rank 0 only)
            {
                "kind": "start",
                "timestamp": utc_timestamp(),
                "current_steps": resume.step if resume else 0,
                "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device": describe_device(self.cuda),
                "world_size": self.world_size,
                # Only when earlier progress exists: the daemon hides earlier attempts' records past this step.
                # 0 means this attempt starts over although checkpoints were there.
                **({"resumed_from_step": resume.step if resume else 0} if plan.found_any else {}),
                **extra,
            }
        )

    def ended_by(self, exc: BaseException, cancel: CancelFlag) -> int:
        """Map an exception to the end record and exit code the supervisor expects."""
        if isinstance(exc, Cancelled) or cancel.requested:
            # A DataLoader worker killed by the same SIGTERM surfaces as its own error: still a cancel.
            log.info("cancelled by SIGTERM")
            return self.end("cancelled", EXIT_CANCELLED, error="cancelled (SIGTERM)")
        if isinstance(exc, (DataError, BadFile, MethodError)):
            # A file the job names is wrong (not UTF-8, truncated, outside the input dirs), or the method asks for
            # what the model does not have (a module freeze cannot find): the message names it.
            log.error("bad input: %s", exc)
            return self.end("failed", EXIT_BAD_INPUT, error=str(exc).strip()[:2000])
        error = f"{type(exc).__name__}: {str(exc).strip()}"[:2000]
        log.error("training failed", exc_info=exc)
        if exception_is_oom(exc):
            # In a step, an evaluation or a checkpoint save alike; the daemon may retry with a smaller micro-batch.
            return self.end("oom", EXIT_OOM, error=error, tried_to_allocate_bytes=_tried_to_allocate(exc))
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: record, then let it go on
            self.end("failed", EXIT_FAILED, error=error or type(exc).__name__)
            raise exc
        return self.end("failed", EXIT_FAILED, error=error)


def _tried_to_allocate(exc: BaseException) -> int | None:
    """The failed allocation, from the exception or the one it was raised from."""
    said = (tried_to_allocate_bytes(str(e)) for e in exception_chain(exc))
    return next((wanted for wanted in said if wanted is not None), None)


def token_counts(trainer: Any) -> dict[str, Any]:
    """The real (non-padding) and computed tokens of the attempt, and the share of padding."""
    if trainer is None or not trainer.tokens_computed:
        return {}
    real, computed = int(trainer.state.num_input_tokens_seen or 0), trainer.tokens_computed
    return {"real_tokens": real, "computed_tokens": computed, "pad_share": round(1 - real / computed, 4)}


def describe_device(cuda: bool) -> str:
    if not cuda:
        return "cpu"
    index = torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"
