"""FakeProbe: GPUs that exist only on paper, for tests, benchmarks and machines without GPUs.

Configured from a string (``FTQ_FAKE_GPUS``)::

    SIZES[@TOPOLOGY]
    SIZES     COUNTxSIZE[,COUNTxSIZE]   2x24GiB, 1x80GiB,2x24GiB, 24GiB (GiB, GB, MiB, MB)
    TOPOLOGY  LEVEL                     every pair at LEVEL; @nvlink: one NVSwitch fabric
              nvlinkN[/LEVEL]           NVLink islands of N consecutive GPUs, LEVEL between
                                        them (default node): 8x80GiB@nvlink4 links 0-3 and 4-7
    LEVEL     nvlink (nv), internal, single (pix), multiple (pxb), hostbridge (phb), node,
              system (sys): NVML's topology levels, nvidia-smi topo -m's names beside them

Without a topology every pair is at node level (same NUMA node, no PCIe switch in common):
the same for every pair, so placement has no preference, and neither the best link nor the
worst. ``set`` and ``set_link`` let a test state a scenario.
"""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import combinations
from typing import Any

from scheduler.gpus.types import LINK_BY_NAME, LINK_NODE, LINK_NVLINK, LINK_UNKNOWN, GpuInfo, Topology

_UNITS = {"gib": (2**30, "GiB"), "gb": (10**9, "GB"), "mib": (2**20, "MiB"), "mb": (10**6, "MB")}
_FAKE_FORM = "expected COUNTxSIZE[,COUNTxSIZE], e.g. 2x24GiB"
_FAKE_ITEM = re.compile(r"^(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*(gib|gb|mib|mb)$", re.IGNORECASE)
_MAX_FAKE_GPUS = 256  # one PCI bus byte each
_SMI_NAMES = {"nvlink": "nv", "single": "pix", "multiple": "pxb", "hostbridge": "phb", "system": "sys"}  # topo -m's
LEVELS = {word: level for name, level in LINK_BY_NAME.items() for word in (name, _SMI_NAMES.get(name)) if word}
_TOPOLOGY_FORM = (
    "expected SIZES@LEVEL or SIZES@nvlinkN[/LEVEL] (NVLink islands of N GPUs, LEVEL between them),"
    f" e.g. 8x80GiB@nvlink4; LEVEL is one of {', '.join(LEVELS)}"
)
_TOPOLOGY = re.compile(r"^(?:nvlink(\d+)(?:/(\w+))?|(\w+))$", re.IGNORECASE)


class FakeProbe:
    """GPUs that exist only on paper, from a string such as ``4x80GiB`` or ``8x80GiB@nvlink4``."""

    def __init__(self, spec: str) -> None:
        items, self._links = _parse(spec)
        self._gpus = [_fake_gpu(i, size, label) for i, (size, label) in enumerate(items)]
        self.description = f"fake: {spec.strip()}"

    @staticmethod
    def parse(text: str) -> list[int]:
        """The memory size in bytes of each fake GPU, in index order; ValueError names the bad part."""
        return [size for size, _ in _parse(text)[0]]

    def snapshot(self) -> list[GpuInfo]:
        return list(self._gpus)

    def topology(self) -> Topology:
        """Every pair's distance, both orders; a pair with a GPU set unhealthy is LINK_UNKNOWN, as with NVML."""
        links: Topology = {}
        for (i, j), distance in self._links.items():
            a, b = self._gpus[i], self._gpus[j]
            links[a.uuid, b.uuid] = links[b.uuid, a.uuid] = distance if a.healthy and b.healthy else LINK_UNKNOWN
        return links

    def set(self, index: int, **changes: Any) -> GpuInfo:
        """Change one fake GPU (any GpuInfo field but uuid/index); used follows free unless given."""
        self._check(index)
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

    def set_link(self, i: int, j: int, distance: int) -> None:
        """The distance between fake GPUs i and j, both ways: a LINK_* level or any int >= 0."""
        self._check(i)
        self._check(j)
        if i == j:
            raise ValueError(f"fake GPU {i} has no link to itself")
        if isinstance(distance, bool) or not isinstance(distance, int) or distance < 0:
            raise ValueError(f"a link distance is an int >= 0 (LINK_NVLINK ... LINK_UNKNOWN), not {distance!r}")
        self._links[min(i, j), max(i, j)] = distance

    def close(self) -> None:
        pass

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self._gpus):
            raise IndexError(f"no fake GPU {index}; there are {len(self._gpus)}")


def _parse(text: str) -> tuple[list[tuple[int, str]], dict[tuple[int, int], int]]:
    """(size in bytes, label) per GPU, and the distance of each pair (i, j), i < j."""
    sizes, at, topology = text.partition("@")
    items = _items(sizes)
    return items, _links(len(items), topology.strip()) if at else dict.fromkeys(_pairs(len(items)), LINK_NODE)


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


def _links(count: int, text: str) -> dict[tuple[int, int], int]:
    match = _TOPOLOGY.match(text)
    if match is None or (match[2] or match[3] or "nvlink").lower() not in LEVELS:
        raise ValueError(f"FTQ_FAKE_GPUS: cannot read the topology {text!r}; {_TOPOLOGY_FORM}")
    if match[3] is not None:
        return dict.fromkeys(_pairs(count), LEVELS[match[3].lower()])
    island = int(match[1])
    between = LEVELS[match[2].lower()] if match[2] else LINK_NODE
    if island < 2 or count % island:
        raise ValueError(
            f"FTQ_FAKE_GPUS: NVLink islands of {island} GPUs in {text!r} must hold 2 or more GPUs"
            f" and divide the {count} GPUs; {_TOPOLOGY_FORM}"
        )
    return {(i, j): LINK_NVLINK if i // island == j // island else between for i, j in _pairs(count)}


def _pairs(count: int) -> list[tuple[int, int]]:
    return list(combinations(range(count), 2))


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
