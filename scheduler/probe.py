"""GPU probes: what GPUs there are, how much memory is free, which processes hold them.

A thin adapter in the manner of nvitop's ``libnvml.py``: NVML is imported and started
lazily, a broken GPU is reported as unhealthy instead of failing the whole probe, and an
unknown value is ``None``, never a sentinel that compares like a number. This module
never imports torch: the daemon must not create a CUDA context of its own.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

GiB = 2**30
_UNITS = {"gib": (2**30, "GiB"), "gb": (10**9, "GB"), "mib": (2**20, "MiB"), "mb": (10**6, "MB")}
_FAKE_FORM = "expected COUNTxSIZE[,COUNTxSIZE], e.g. 2x24GiB"
_FAKE_ITEM = re.compile(r"^(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*(gib|gb|mib|mb)$", re.IGNORECASE)
_MAX_FAKE_GPUS = 256  # one PCI bus byte each
# NVML's "not available" values (c_uint(-1), c_ulonglong(-1)); older bindings pass them through.
_NOT_AVAILABLE = {2**32 - 1, 2**64 - 1}
_NO_GPU_HINT = "jobs with gpus: 0 run on CPU slots; set FTQ_FAKE_GPUS=2x24GiB to simulate GPUs"


class ProbeError(RuntimeError):
    """NVML started but could not list the GPUs at all (e.g. the driver went away)."""


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory: int | None  # bytes; None where NVML cannot tell (WDDM, MIG, containers)


@dataclass(frozen=True)
class GpuInfo:
    uuid: str
    index: int  # NVML index, PCI-bus ordered, as CUDA_DEVICE_ORDER=PCI_BUS_ID numbers them
    name: str
    memory_total: int | None  # bytes
    memory_free: int | None
    memory_used: int | None
    utilization: int | None  # percent
    processes: tuple[GpuProcess, ...]
    pci_bus_id: str | None
    healthy: bool = True
    error: str | None = None


class GpuProbe(Protocol):
    """What the scheduler and the /gpus route need from a probe, real or fake."""

    @property
    def description(self) -> str: ...

    def snapshot(self) -> list[GpuInfo]: ...

    def close(self) -> None: ...


def format_bytes(n: int | None) -> str:
    """Human-readable size for tables: ``24.0 GiB``, or ``unknown`` for None."""
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class FakeProbe:
    """GPUs that exist only on paper, from a string such as ``4x80GiB`` or ``1x80GiB,2x24GiB``.

    For tests and machines without GPUs; ``set`` lets a test state a scenario.
    """

    def __init__(self, spec: str) -> None:
        self._gpus = [_fake_gpu(i, size, label) for i, (size, label) in enumerate(self._items(spec))]
        self.description = f"fake: {spec.strip()}"

    @staticmethod
    def parse(text: str) -> list[int]:
        """The memory size in bytes of each fake GPU, in index order; ValueError names the bad part."""
        return [size for size, _ in FakeProbe._items(text)]

    @staticmethod
    def _items(text: str) -> list[tuple[int, str]]:
        items: list[tuple[int, str]] = []
        for part in text.split(","):
            part = part.strip()
            match = _FAKE_ITEM.match(part)
            if match is None:
                raise ValueError(f"FTQ_FAKE_GPUS: cannot read {part!r}; {_FAKE_FORM}")
            count = int(match[1]) if match[1] is not None else 1
            unit, unit_name = _UNITS[match[3].lower()]
            size = round(float(match[2]) * unit)
            if count < 1 or size < 1:
                raise ValueError(f"FTQ_FAKE_GPUS: cannot read {part!r} (count and size must be > 0); {_FAKE_FORM}")
            if len(items) + count > _MAX_FAKE_GPUS:  # checked before the list grows: "10**12x24GiB"
                raise ValueError(f"FTQ_FAKE_GPUS: more than {_MAX_FAKE_GPUS} GPUs in {text!r}; {_FAKE_FORM}")
            items += [(size, f"{match[2]}{unit_name}")] * count
        return items

    def snapshot(self) -> list[GpuInfo]:
        return list(self._gpus)

    def set(self, index: int, **changes: Any) -> GpuInfo:
        """Change one fake GPU (any GpuInfo field but uuid/index); used follows free unless given."""
        if not 0 <= index < len(self._gpus):
            raise IndexError(f"no fake GPU {index}; there are {len(self._gpus)}")
        if {"uuid", "index"} & changes.keys():
            raise ValueError("a fake GPU's uuid and index are fixed")
        gpu = self._gpus[index]
        if "processes" in changes:
            changes["processes"] = tuple(changes["processes"])
        free = changes.get("memory_free")
        total = changes.get("memory_total", gpu.memory_total)
        if "memory_used" not in changes and free is not None and total is not None:
            changes["memory_used"] = total - free
        self._gpus[index] = replace(gpu, **changes)
        return self._gpus[index]

    def close(self) -> None:
        pass


def _fake_gpu(index: int, size: int, label: str) -> GpuInfo:
    return GpuInfo(
        uuid=f"GPU-fake-0000-0000-0000-{index:012d}",
        index=index,
        name=f"Fake GPU {label}",
        memory_total=size,
        memory_free=size,
        memory_used=0,
        utilization=0,
        processes=(),
        pci_bus_id=f"00000000:{index:02X}:00.0",
    )


class NoGpuProbe:
    """The probe of a machine with no usable GPU; ``description`` says why and what to do."""

    def __init__(self, description: str) -> None:
        self.description = description

    def snapshot(self) -> list[GpuInfo]:
        return []

    def close(self) -> None:
        pass


class NvmlProbe:
    """Reads the GPUs through pynvml (the ``nvidia-ml-py`` package), started on first use."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._lock = threading.Lock()
        self._driver = "driver unknown"
        self._count: int | None = None

    @property
    def description(self) -> str:
        if self._nvml is None:
            return "NVML (not started)"
        count = "? GPUs" if self._count is None else f"{self._count} GPU{'' if self._count == 1 else 's'}"
        return f"NVML {self._driver}, {count}"

    def start(self) -> None:
        """Import pynvml and call nvmlInit once; raises ImportError or pynvml.NVMLError."""
        with self._lock:
            if self._nvml is not None:
                return
            import pynvml  # here, not at module import: a machine without NVML must still load ftq

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._driver = _field(pynvml, pynvml.nvmlSystemGetDriverVersion) or self._driver
            self._count = _field(pynvml, pynvml.nvmlDeviceGetCount)

    def snapshot(self) -> list[GpuInfo]:
        """Every GPU, a broken one marked unhealthy.

        If NVML cannot even count the GPUs, this raises ProbeError rather than returning
        ``[]``: an empty list would read as "the GPUs are gone and nothing holds them",
        and the scheduler would act on that; an error lets it keep its leases and skip a tick.
        """
        self.start()
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as error:
            raise ProbeError(f"NVML could not count the GPUs: {_text(error)}") from error
        self._count = count
        return [_read_device(nvml, index) for index in range(count)]

    def close(self) -> None:
        with self._lock:
            nvml, self._nvml = self._nvml, None
            if nvml is not None:
                try:
                    nvml.nvmlShutdown()
                except nvml.NVMLError:
                    pass  # shutting down a driver that already went away is not worth a crash


def _read_device(nvml: Any, index: int) -> GpuInfo:
    """One GPU; a failing field is None, a failing handle or memory query marks it unhealthy."""
    handle = None
    memory = None
    error = None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    except nvml.NVMLError as exc:
        error = _text(exc)

    def field(read: Callable[[Any], Any]) -> Any:
        return None if handle is None else _field(nvml, read, handle)

    utilization = field(nvml.nvmlDeviceGetUtilizationRates)
    bus_id = getattr(field(nvml.nvmlDeviceGetPciInfo), "busId", None)
    processes = field(nvml.nvmlDeviceGetComputeRunningProcesses) or []
    return GpuInfo(
        uuid=field(nvml.nvmlDeviceGetUUID) or f"unknown-{index}",  # never "": two broken GPUs would collide
        index=index,
        name=field(nvml.nvmlDeviceGetName) or "unknown",
        memory_total=_known(getattr(memory, "total", None)),
        memory_free=_known(getattr(memory, "free", None)),
        memory_used=_known(getattr(memory, "used", None)),
        utilization=_known(getattr(utilization, "gpu", None)),
        processes=tuple(GpuProcess(int(p.pid), _known(getattr(p, "usedGpuMemory", None))) for p in processes),
        pci_bus_id=None if bus_id is None else _text(bus_id),
        healthy=error is None,
        error=error,
    )


def _field(nvml: Any, read: Callable[..., Any], *args: Any) -> Any:
    """One NVML call, None when it fails (Not Supported is common: MIG, vGPU, containers)."""
    try:
        value = read(*args)
    except nvml.NVMLError:
        return None
    return _text(value) if isinstance(value, bytes) else value


def _known(value: int | None) -> int | None:
    return None if value is None or value in _NOT_AVAILABLE else int(value)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


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
            f"no GPUs: NVML could not start ({_text(error)}); check the NVIDIA driver with nvidia-smi"
            f" (in Docker: --gpus all); {_NO_GPU_HINT}"
        )
    return probe
