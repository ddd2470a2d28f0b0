"""What a GPU probe reports, as plain data: GPUs, their processes and links, and the GpuProbe protocol.

Pure (no NVML, no /proc): the scheduling policy (scheduler.policy) reads these types, and every
probe (scheduler.gpus.nvml, scheduler.gpus.fake, scheduler.ray.probe) fills them. An unknown value
is ``None``, never a sentinel that compares like a number (one exception: link distances, see
``LINK_UNKNOWN``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

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
# Each known level by its name: NVML's NVML_TOPOLOGY_<NAME> in lower case, NVLink's besides.
LINK_BY_NAME = {
    "nvlink": LINK_NVLINK,
    "internal": LINK_INTERNAL,
    "single": LINK_SINGLE,
    "multiple": LINK_MULTIPLE,
    "hostbridge": LINK_HOSTBRIDGE,
    "node": LINK_NODE,
    "system": LINK_SYSTEM,
}

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
