"""A cancel (SIGTERM) as the recipe sees it: a flag while training, an exception otherwise.

Split from worker.run.recipe so that the Trainer extensions in worker.run.resume can let
a cancel pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainingArguments


class Cancelled(Exception):
    """Raised by the SIGTERM handler while there is no training step to stop at."""


class CancelFlag:
    """SIGTERM handler: stop at the next step while training (saving a checkpoint there), at once otherwise."""

    def __init__(self, requested: bool = False) -> None:
        self.requested = requested
        self.training = False

    def __call__(self, signum: int, frame: Any) -> None:
        already = self.requested
        self.requested = True
        # Raising inside a training step could leave CUDA state half-done; a flag is checked after each
        # step. Before training (loading the model) nothing is worth finishing; a second SIGTERM insists,
        # and skips the checkpoint the first one asked for.
        if not self.training or already:
            raise Cancelled()


def stop_check(cancel: CancelFlag, args: TrainingArguments) -> Callable[[], bool]:
    """The callback's should_stop: this process's cancel flag, agreed on by every rank.

    Ranks get torchrun's SIGTERM a moment apart; if one left the loop a step
    before the others, they would wait in a collective for it for good (and
    their checkpoint would mix two steps). So at every step end all ranks
    all-reduce their flags (one number) and stop, and save, together; a rank
    told to stop by another takes it as its own cancel.
    """
    if args.world_size <= 1 or not torch.distributed.is_initialized():
        return lambda: cancel.requested

    def agreed() -> bool:
        flag = torch.tensor([1.0 if cancel.requested else 0.0], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            cancel.requested = True
        return cancel.requested

    return agreed
