"""Whether an error or a log says a process ran out of GPU memory: the one test for it in ftq.

Without torch (by class name and message), so that the launcher can read a rank's log with it too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# Text that means a process ran out of GPU memory, whichever layer said it: PyTorch's caching allocator
# (torch.OutOfMemoryError, or the driver error behind expandable segments), a raw CUDA call, cuBLAS / cuDNN
# failing to allocate their workspace, or NCCL (whose "out of memory" may come a line or two after "NCCL").
# Host memory (Python's MemoryError, DefaultCPUAllocator) is deliberately not here: a smaller micro-batch is
# not the cure for it, and the daemon retries an OOM with one.
OOM_PATTERNS = (
    re.compile(r"\b(?:CUDA|HIP) out of memory", re.IGNORECASE),
    re.compile(r"\bOutOfMemoryError\b"),
    re.compile(r"CUDA (?:driver )?error: out of memory", re.IGNORECASE),
    re.compile(r"cudaErrorMemoryAllocation"),
    re.compile(r"CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED"),
    re.compile(r"NCCL(?:.|\n){0,400}?\bout of memory\b", re.IGNORECASE),
)
# PyTorch's allocator says how much it wanted: "Tried to allocate 2.00 GiB", "... 512.00 KiB", "... 96 bytes".
_TRIED_TO_ALLOCATE = re.compile(r"Tried to allocate (\d+(?:\.\d+)?) ?(bytes|B|KiB|MiB|GiB|TiB)\b", re.IGNORECASE)
_UNIT_BYTES = {"bytes": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def is_oom(text: str) -> bool:
    """Whether an error message or a log says the process ran out of GPU memory.

    The one test for "out of memory" in ftq: the recipe applies it to the
    exception that ended a run (exception_is_oom), the launcher to the log of a
    rank that died without reporting.
    """
    return any(pattern.search(text) for pattern in OOM_PATTERNS)


def exception_is_oom(exc: BaseException) -> bool:
    """Whether an exception, or one it was raised from or while handling, says GPU memory ran out.

    By class name as well as by message, so that this module needs no torch:
    torch.OutOfMemoryError (torch.cuda.OutOfMemoryError) is caught whatever its
    message, and an OOM that a library re-raised as its own error still counts.
    """
    return any(
        any(cls.__name__ == "OutOfMemoryError" for cls in type(e).__mro__) or is_oom(f"{type(e).__name__}: {e}")
        for e in exception_chain(exc)
    )


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then the one it was raised from or while handling, and so on; a cycle ends it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def tried_to_allocate_bytes(text: str) -> int | None:
    """The allocation that failed, in bytes, from PyTorch's "Tried to allocate 2.00 GiB"; None when not said."""
    match = _TRIED_TO_ALLOCATE.search(text)
    if match is None:
        return None
    return int(float(match.group(1)) * _UNIT_BYTES[match.group(2).lower()])
