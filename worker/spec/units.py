"""The byte units that daemon and worker share: one GiB, as NVML, torch and the estimate count it."""

from __future__ import annotations

GIB = 1 << 30


def gib_text(n: int) -> str:
    """Bytes in GiB to one decimal, as reasons and messages put a size: ``24.0 GiB``."""
    return f"{n / GIB:.1f} GiB"
