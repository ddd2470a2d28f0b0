"""The NVML adapter: the GPUs, their free memory, processes and links, read through pynvml.

A thin adapter in the manner of nvitop's ``libnvml.py``: NVML is imported and started
lazily, a broken GPU is reported as unhealthy instead of failing the whole probe, and an
unknown value is ``None``. This module never imports torch: the daemon must not create a
CUDA context of its own. Which probe a machine gets is scheduler.gpus.probe's to say.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from itertools import combinations
from typing import Any

from scheduler.gpus.types import (
    LINK_HOSTBRIDGE,
    LINK_INTERNAL,
    LINK_MULTIPLE,
    LINK_NODE,
    LINK_NVLINK,
    LINK_SINGLE,
    LINK_SYSTEM,
    LINK_UNKNOWN,
    GpuInfo,
    GpuProcess,
    ProbeError,
    Topology,
)

# NVML's "not available" values (c_uint(-1), c_ulonglong(-1)); older bindings pass them through.
_NOT_AVAILABLE = {2**32 - 1, 2**64 - 1}
_NVML_LEVELS = {
    "NVML_TOPOLOGY_INTERNAL": LINK_INTERNAL,
    "NVML_TOPOLOGY_SINGLE": LINK_SINGLE,
    "NVML_TOPOLOGY_MULTIPLE": LINK_MULTIPLE,
    "NVML_TOPOLOGY_HOSTBRIDGE": LINK_HOSTBRIDGE,
    "NVML_TOPOLOGY_NODE": LINK_NODE,
    "NVML_TOPOLOGY_SYSTEM": LINK_SYSTEM,
}
_NVSWITCH = "nvswitch "  # prefix of a remote-end key that is an NVSwitch, not a GPU


class NvmlProbe:
    """Reads the GPUs through pynvml (the ``nvidia-ml-py`` package), started on first use."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._lock = threading.Lock()
        self._driver = "driver unknown"
        self._count: int | None = None
        self._links: tuple[tuple[str, ...], Topology] | None = None  # (the UUIDs it was read for, the map)
        self._unhealthy: frozenset[str] = frozenset()  # by the last snapshot

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
        gpus = [_read_device(nvml, index) for index in range(count)]
        uuids = tuple(g.uuid for g in gpus)
        with self._lock:
            if self._links is not None and self._links[0] != uuids:
                self._links = None  # a GPU came, went or fell off the bus: read the links again
            self._unhealthy = frozenset(g.uuid for g in gpus if not g.healthy)
        return gpus

    def topology(self) -> Topology:
        """The distance of every two GPUs, both orders; read once, again when the GPU set changes.

        Never raises: a link that cannot be read is LINK_UNKNOWN, and so is every link of a GPU
        that the last snapshot found unhealthy.
        """
        try:
            self.start()
        except Exception:  # ImportError or NVMLError: make_probe has said why; no GPUs, no links
            return {}
        with self._lock:
            if self._links is None and self._nvml is not None:
                self._links = _read_topology(self._nvml)
            if self._links is None:
                return {}
            links, unhealthy = self._links[1], self._unhealthy
        return {pair: LINK_UNKNOWN if unhealthy.intersection(pair) else d for pair, d in links.items()}

    def close(self) -> None:
        with self._lock:
            nvml, self._nvml, self._links = self._nvml, None, None  # handles die with the session
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
    return GpuInfo(
        uuid=_uuid(nvml, handle, index),
        index=index,
        name=field(nvml.nvmlDeviceGetName) or "unknown",
        memory_total=_known(getattr(memory, "total", None)),
        memory_free=_known(getattr(memory, "free", None)),
        memory_used=_known(getattr(memory, "used", None)),
        utilization=_known(getattr(utilization, "gpu", None)),
        processes=() if handle is None else _processes(nvml, handle),
        pci_bus_id=None if bus_id is None else _text(bus_id),
        healthy=error is None,
        error=error,
    )


def _uuid(nvml: Any, handle: Any, index: int) -> str:
    uuid = None if handle is None else _field(nvml, nvml.nvmlDeviceGetUUID, handle)
    return uuid or f"unknown-{index}"  # never "": two broken GPUs would collide


def _processes(nvml: Any, handle: Any) -> tuple[GpuProcess, ...]:
    """Compute and graphics processes (both hold memory), once per pid, named where NVML may say."""
    found: dict[int, GpuProcess] = {}
    for read in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
        for p in _field(nvml, read, handle) or []:
            pid = int(p.pid)
            if pid not in found:
                name = _field(nvml, nvml.nvmlSystemGetProcessName, pid) or None
                found[pid] = GpuProcess(pid, _known(getattr(p, "usedGpuMemory", None)), name)
    return tuple(found.values())


def _read_topology(nvml: Any) -> tuple[tuple[str, ...], Topology] | None:
    """Every pair's distance, both orders, keyed by UUID; None when NVML cannot count the GPUs."""
    count = _field(nvml, nvml.nvmlDeviceGetCount)
    if count is None:
        return None
    handles = [_field(nvml, nvml.nvmlDeviceGetHandleByIndex, i) for i in range(count)]
    uuids = tuple(_uuid(nvml, h, i) for i, h in enumerate(handles))
    pci = [None if h is None else _field(nvml, nvml.nvmlDeviceGetPciInfo, h) for h in handles]
    buses = [_bus_key(getattr(p, "busId", None)) for p in pci]
    remotes = [set() if h is None else _nvlink_remotes(nvml, h) for h in handles]
    levels = {getattr(nvml, name): distance for name, distance in _NVML_LEVELS.items()}
    links: Topology = {}
    for i, j in combinations(range(count), 2):
        if handles[i] is None or handles[j] is None:
            distance = LINK_UNKNOWN
        elif _nvlinked(buses[i], remotes[i], buses[j], remotes[j]):
            distance = LINK_NVLINK
        else:
            level = _field(nvml, nvml.nvmlDeviceGetTopologyCommonAncestor, handles[i], handles[j])
            distance = levels.get(level, LINK_UNKNOWN)
        links[uuids[i], uuids[j]] = links[uuids[j], uuids[i]] = distance
    return uuids, links


def _nvlink_remotes(nvml: Any, handle: Any) -> set[str]:
    """The far ends of a GPU's active NVLinks: a GPU's bus key, or _NVSWITCH + a switch's."""
    remotes: set[str] = set()
    # A GPU without NVLink answers Not Supported, one with fewer links Invalid Argument past its last.
    for link in range(nvml.NVML_NVLINK_MAX_LINKS):
        if _field(nvml, nvml.nvmlDeviceGetNvLinkState, handle, link) != nvml.NVML_FEATURE_ENABLED:
            continue
        pci = _field(nvml, nvml.nvmlDeviceGetNvLinkRemotePciInfo, handle, link)
        bus = _bus_key(getattr(pci, "busId", None))
        if _field(nvml, nvml.nvmlDeviceGetNvLinkRemoteDeviceType, handle, link) == nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH:
            remotes.add(_NVSWITCH + (bus or "?"))
        elif bus is not None:
            remotes.add(bus)
    return remotes


def _nvlinked(bus_a: str | None, remotes_a: set[str], bus_b: str | None, remotes_b: set[str]) -> bool:
    """A direct link either way (one side may fail to say), or an NVSwitch both reach (DGX, HGX)."""
    if (bus_b is not None and bus_b in remotes_a) or (bus_a is not None and bus_a in remotes_b):
        return True
    return any(r.startswith(_NVSWITCH) for r in remotes_a & remotes_b)  # a GPU both reach is two hops


def _bus_key(bus: Any) -> str | None:
    """A PCI address that compares across NVML's spellings: 00000000:1F:00.0, 0000:1f:00.0."""
    if bus is None or not _text(bus).strip():
        return None
    text = _text(bus).strip().lower()
    domain, sep, rest = text.partition(":")
    try:
        return f"{int(domain, 16):08x}{sep}{rest}" if rest.count(":") == 1 else text
    except ValueError:
        return text


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
