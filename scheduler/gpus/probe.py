"""Which probe this machine gets: the fake one when FTQ_FAKE_GPUS asks, else NVML, else none that says why."""

from __future__ import annotations

from scheduler.gpus.fake import FakeProbe
from scheduler.gpus.nvml import NvmlProbe
from scheduler.gpus.types import GpuInfo, GpuProbe, Topology

_NO_GPU_HINT = "jobs with gpus: 0 run on CPU slots; set FTQ_FAKE_GPUS=2x24GiB to simulate GPUs"


class NoGpuProbe:
    """The probe of a machine with no usable GPU; ``description`` says why and what to do."""

    def __init__(self, description: str) -> None:
        self.description = description

    def snapshot(self) -> list[GpuInfo]:
        return []

    def topology(self) -> Topology:
        return {}

    def close(self) -> None:
        pass


def make_probe(fake_gpus: str | None) -> GpuProbe:
    """The fake when FTQ_FAKE_GPUS is set, else NVML, else a probe with no GPUs that says why."""
    if fake_gpus and fake_gpus.strip():
        return FakeProbe(fake_gpus)
    probe = NvmlProbe()
    try:
        probe.start()
    except ImportError:
        return NoGpuProbe(f"no GPUs: the pynvml module is missing (pip install nvidia-ml-py); {_NO_GPU_HINT}")
    except Exception as error:  # any failure to start NVML means "no GPUs", never a crash
        return NoGpuProbe(
            f"no GPUs: NVML could not start ({error}); check the NVIDIA driver with nvidia-smi"
            f" (in Docker: --gpus all); {_NO_GPU_HINT}"
        )
    return probe
