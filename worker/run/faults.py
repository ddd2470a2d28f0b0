"""Faults injected on purpose, so that tests can see a run fail the way it fails on a real GPU.

A CUDA out-of-memory cannot happen on a machine without a GPU, yet the daemon's
retry and requeue must be tested end to end. The environment variable
FTQ_FAULT (set only by tests; the daemon passes it through to its workers)
holds comma-separated faults:

    KIND@step:N[@batch>B][@rank:R]

KIND is `oom` (the real torch.OutOfMemoryError, with the message PyTorch's
allocator gives), `crash` (a RuntimeError), `sigkill` (the process kills
itself with SIGKILL, as the kernel's OOM killer would) or `nan` (a trainable
weight becomes NaN, as in a run that diverges). It happens inside the
N-th optimizer step, i.e. in the first forward pass after N-1 steps are done,
so everything that follows an error in a step (the end record, the exit code,
the rank reports) is the real path. `@batch>B` fires only when the micro-batch
(per_device_train_batch_size) is above B, so that a retry with a smaller one
gets past it; `@rank:R` fires only on rank R of a multi-GPU run (default: every
rank).

A value that does not parse is bad input, reported with the spec's problems:
a test that meant to inject a fault must not pass because the fault was ignored.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

FAULT_ENV = "FTQ_FAULT"
KINDS = ("oom", "crash", "sigkill", "nan")
FORMAT = "KIND@step:N[@batch>B][@rank:R] with KIND one of oom, crash, sigkill, nan (e.g. oom@step:3@batch>2)"

_QUALIFIER = re.compile(r"^(?:(?P<name>step|rank):(?P<value>\d+)|batch>(?P<batch>\d+))$")


class FaultSpecError(ValueError):
    """FTQ_FAULT does not parse; the message names the part that is wrong and the format."""


@dataclass(frozen=True)
class Fault:
    """One fault: what happens, in which step, and under which conditions."""

    kind: Literal["oom", "crash", "sigkill", "nan"]
    step: int  # 1-based: the N-th optimizer step, entered when N-1 steps are complete
    batch_above: int | None = None  # only when per_device_train_batch_size > this
    rank: int | None = None  # only on this rank; None: every rank

    def applies(self, completed_steps: int, micro_batch: int, rank: int) -> bool:
        """Whether this fault fires in the step that begins after `completed_steps` steps."""
        return (
            completed_steps == self.step - 1
            and (self.batch_above is None or micro_batch > self.batch_above)
            and (self.rank is None or rank == self.rank)
        )

    def __str__(self) -> str:
        text = f"{self.kind}@step:{self.step}"
        if self.batch_above is not None:
            text += f"@batch>{self.batch_above}"
        if self.rank is not None:
            text += f"@rank:{self.rank}"
        return text


def parse_faults(text: str) -> list[Fault]:
    """Every fault in an FTQ_FAULT value ('' is none); FaultSpecError names each part that does not parse."""
    faults: list[Fault] = []
    problems: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            faults.append(_parse_one(part))
        except FaultSpecError as exc:
            problems.append(str(exc))
    if problems:
        raise FaultSpecError(f"{FAULT_ENV}={text!r}: {'; '.join(problems)}; expected {FORMAT}")
    return faults


def faults_from_env(env: Mapping[str, str]) -> list[Fault]:
    return parse_faults(env.get(FAULT_ENV, ""))


def _parse_one(part: str) -> Fault:
    kind, *qualifiers = part.split("@")
    if kind not in KINDS:
        raise FaultSpecError(f"{part!r}: unknown kind {kind!r}")
    seen: dict[str, int] = {}
    for qualifier in qualifiers:
        match = _QUALIFIER.match(qualifier.strip())
        if match is None:
            raise FaultSpecError(f"{part!r}: cannot read {qualifier!r}")
        name = match.group("name") or "batch"
        if name in seen:
            raise FaultSpecError(f"{part!r}: {name} is given twice")
        seen[name] = int(match.group("value") or match.group("batch"))
    if "step" not in seen:
        raise FaultSpecError(f"{part!r}: no step:N")
    if seen["step"] < 1:
        raise FaultSpecError(f"{part!r}: steps count from 1")
    return Fault(kind, seen["step"], seen.get("batch"), seen.get("rank"))  # type: ignore[arg-type]


def injected_oom(device: int = 0) -> torch.OutOfMemoryError:
    """torch.OutOfMemoryError worded as PyTorch's caching allocator words it, and saying it was injected."""
    return torch.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate 2.00 GiB. GPU {device} has a total capacity of 79.19 GiB of which "
        "1.06 GiB is free. Of the allocated memory 75.32 GiB is allocated by PyTorch, and 1.21 GiB is reserved by "
        "PyTorch but unallocated. (fault injected by FTQ_FAULT)"
    )


def fire(fault: Fault, completed_steps: int, rank: int, model: Any = None) -> None:
    """Make the fault happen here."""
    log.warning("FTQ_FAULT: injecting %s (rank %d, after %d steps)", fault, rank, completed_steps)
    if fault.kind == "nan":  # a run that diverges: one trainable weight becomes NaN, and the loss with it
        trainable = next(p for p in model.parameters() if p.requires_grad)
        with torch.no_grad():
            trainable.fill_(float("nan"))
        return
    if fault.kind == "oom":
        raise injected_oom(int(os.environ.get("LOCAL_RANK", "0")))
    if fault.kind == "crash":
        raise RuntimeError(f"injected crash in step {fault.step} (fault injected by FTQ_FAULT: {fault})")
    for handler in logging.getLogger().handlers:  # the log line above should survive the kill
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjector(TrainerCallback):
    """Arms a fault when its step begins; a forward pre-hook on the model fires it.

    Firing from inside the forward pass rather than from on_step_begin puts the
    error where a real OOM is raised: within the step, under autocast, with
    DDP waiting on the other ranks.
    """

    def __init__(self, faults: Sequence[Fault], rank: int) -> None:
        self.faults = list(faults)
        self.rank = rank
        self.armed: Fault | None = None
        self.armed_at = 0
        self._hooked: set[int] = set()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        model = kw.get("model")
        if model is not None and id(model) not in self._hooked:
            model.register_forward_pre_hook(self._pre_forward)
            self._hooked.add(id(model))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        micro_batch = args.per_device_train_batch_size
        self.armed = next((f for f in self.faults if f.applies(state.global_step, micro_batch, self.rank)), None)
        self.armed_at = state.global_step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.armed = None  # an evaluation or a save after the step is not "in the step"

    def _pre_forward(self, module: Any, inputs: Any) -> None:
        fault, self.armed = self.armed, None
        if fault is not None:
            fire(fault, self.armed_at, self.rank, module)
