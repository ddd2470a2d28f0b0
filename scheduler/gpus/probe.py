"""GPU probes: what GPUs there are, how much memory is free, which processes hold them, how they link.

A thin adapter in the manner of nvitop's ``libnvml.py``: NVML is imported and started
lazily, a broken GPU is reported as unhealthy instead of failing the whole probe, and an
unknown value is ``None``, never a sentinel that compares like a number (one exception:
link distances, see ``LINK_UNKNOWN``). This module never imports torch: the daemon must not
create a CUDA context of its own. The fake probe lives in ``scheduler.gpus.fake``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from scheduler.gpus.fake import FakeProbe as FakeProbe  # re-exported; at run time by __getattr__

GiB = 2**30
# NVML's "not available" values (c_uint(-1), c_ulonglong(-1)); older bindings pass them through.
_NOT_AVAILABLE = {2**32 - 1, 2**64 - 1}
_NO_GPU_HINT = "jobs with gpus: 0 run on CPU slots; set FTQ_FAKE_GPUS=2x24GiB to simulate GPUs"

# How far apart two GPUs are, lower is closer: NVLink, then NVML's common-ancestor levels
# (nvmlDeviceGetTopologyCommonAncestor; nvidia-smi topo -m: NV#, -, PIX, PXB, PHB, NODE, SYS).
LINK_NVLINK = 0
LINK_INTERNAL = 10  # same board (a dual-GPU card)
LINK_SINGLE = 20  # one PCIe switch
LINK_MULTIPLE = 30  # several PCIe switches, no host bridge
LINK_HOSTBRIDGE = 40  # the same PCIe host bridge
LINK_NODE = 50  # the same NUMA node, across its host bridges
LINK_SYSTEM = 60  # across CPU sockets (SMP interconnect)
# A link we could not read. A number, not None, on purpose: placement minimises distance and
# an unknown link must lose to every known one; None would make every caller special-case it.
LINK_UNKNOWN = 100
_NVML_LEVELS = {
    "NVML_TOPOLOGY_INTERNAL": LINK_INTERNAL,
    "NVML_TOPOLOGY_SINGLE": LINK_SINGLE,
    "NVML_TOPOLOGY_MULTIPLE": LINK_MULTIPLE,
    "NVML_TOPOLOGY_HOSTBRIDGE": LINK_HOSTBRIDGE,
    "NVML_TOPOLOGY_NODE": LINK_NODE,
    "NVML_TOPOLOGY_SYSTEM": LINK_SYSTEM,
}
_NVSWITCH = "nvswitch "  # prefix of a remote-end key that is an NVSwitch, not a GPU

Topology = dict[tuple[str, str], int]


class ProbeError(RuntimeError):
    """NVML started but could not list the GPUs at all (e.g. the driver went away)."""


@dataclass(frozen=True)
class GpuProcess:
    # NVML's pid is in the host's pid namespace: in a container without --pid=host it matches
    # none of ours, so our own workers would read as foreign there.
    pid: int
    used_memory: int | None  # bytes; None where NVML cannot tell (WDDM, MIG, containers)
    name: str | None = None  # nvmlSystemGetProcessName; None where not allowed or already gone


@dataclass(frozen=True)
class GpuInfo:
    uuid: str
    index: int  # NVML index, PCI-bus ordered, as CUDA_DEVICE_ORDER=PCI_BUS_ID numbers them
    name: str
    memory_total: int | None  # bytes
    memory_free: int | None
    memory_used: int | None
    utilization: int | None  # percent
    processes: tuple[GpuProcess, ...]  # compute and graphics, once per pid
    pci_bus_id: str | None
    healthy: bool = True
    error: str | None = None
    # The Ray node the GPU is on (its node id); "" on the daemon's own machine. On a cluster the probe makes
    # `uuid` node-qualified ("<node>/<uuid>"), so a lease, a reservation and a topology key name one GPU of
    # one node, and `index` is the PCI-ordered index on that node (its CUDA_VISIBLE_DEVICES number).
    node: str = ""


class GpuProbe(Protocol):
    """What the scheduler and the /gpus route need from a probe, real or fake."""

    @property
    def description(self) -> str: ...

    def snapshot(self) -> list[GpuInfo]: ...

    def topology(self) -> Topology:
        """(uuid_a, uuid_b) -> LINK_* distance, both orders of every pair; never raises."""
        ...

    def close(self) -> None: ...


def __getattr__(name: str) -> Any:
    # FakeProbe is re-exported from here; imported lazily because scheduler.gpus.fake builds on
    # the types above, and an import at the top of either module would fail when the other is
    # imported first.
    if name == "FakeProbe":
        from scheduler.gpus.fake import FakeProbe as fake

        return fake
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_bytes(n: int | None) -> str:
    """Human-readable size for tables: ``24.0 GiB``, or ``unknown`` for None."""
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def link_distance(topology: Mapping[tuple[str, str], int], a: str, b: str) -> int:
    """The distance between GPUs a and b by UUID; LINK_UNKNOWN for a pair the map lacks.

    Either order of a pair is looked up, so a hand-written map may hold just one.
    """
    if a == b:
        return LINK_NVLINK  # a GPU is as close to itself as it gets
    return topology.get((a, b), topology.get((b, a), LINK_UNKNOWN))


def foreign_processes(gpu: GpuInfo, our_pids: Iterable[int]) -> tuple[GpuProcess, ...]:
    """The processes on gpu that are not ours: their pid is not in our_pids.

    Pass every pid of our workers, children included: ``roots | descendant_pids(roots)``.
    """
    ours = set(our_pids)
    return tuple(p for p in gpu.processes if p.pid not in ours)


def descendant_pids(root_pids: Iterable[int], proc: str | os.PathLike[str] = "/proc") -> set[int]:
    """Every process below root_pids (torchrun ranks, data loader workers ...), by /proc/PID/stat's ppid.

    The roots are not added for being roots: ours = ``roots | descendant_pids(roots)``. Empty
    where there is no /proc (macOS, Windows). One read of /proc per call, a few ms on a busy
    host; a process that starts or ends meanwhile may be missed.
    """
    return descendants_in(process_children(proc), root_pids)


def process_children(proc: str | os.PathLike[str] = "/proc") -> dict[int, list[int]]:
    """ppid -> its children, from one read of /proc (empty where there is none)."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return {}
    children: dict[int, list[int]] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(proc, entry, "stat").read_bytes()
        except OSError:  # gone since listdir, or hidden from us
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and ")", so split after the last ")"
        fields = stat.rpartition(b")")[2].split()
        if len(fields) >= 2 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry))
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


def make_probe(fake_gpus: str | None) -> GpuProbe:
    """The fake when FTQ_FAKE_GPUS is set, else NVML, else a probe with no GPUs that says why."""
    if fake_gpus and fake_gpus.strip():
        from scheduler.gpus.fake import FakeProbe

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
