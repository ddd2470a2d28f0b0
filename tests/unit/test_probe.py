"""GPU probes without a GPU: FakeProbe, the pure helpers, and NvmlProbe against scenario fakes of pynvml.

Each scenario is named after the bug it stands for (gpustat's ``scenario_failing_one_gpu``).
The fakes raise pynvml's own exception classes, so messages are the ones NVML gives.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pynvml as real_nvml
import pytest

from scheduler.gpus.fake import FakeProbe
from scheduler.gpus.nvml import NvmlProbe
from scheduler.gpus.probe import NoGpuProbe, make_probe
from scheduler.gpus.processes import descendant_pids, foreign_processes
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
    format_bytes,
    link_distance,
)
from worker.spec.units import GIB

# --- FakeProbe ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sizes"),
    [
        ("2x24GiB", [24 * 2**30] * 2),
        ("4x80GiB", [80 * 2**30] * 4),
        ("1x80GiB,2x24GiB", [80 * 2**30, 24 * 2**30, 24 * 2**30]),
        ("24GiB", [24 * 2**30]),
        ("1x40GB", [40 * 10**9]),
        ("2x512MiB", [512 * 2**20] * 2),
        ("3x100mb", [100 * 10**6] * 3),
        (" 1 x 24gib , 1X16GIB ", [24 * 2**30, 16 * 2**30]),
        ("0.5GiB", [2**29]),
    ],
)
def test_fake_parse_good(text: str, sizes: list[int]) -> None:
    assert FakeProbe.parse(text) == sizes


BAD_FAKE_SPECS = ["", "2x", "x24GiB", "0x24GiB", "2x0GiB", "2x24", "2x24TB", "two", "2x24GiB,", "-1x24GiB"]


@pytest.mark.parametrize("text", BAD_FAKE_SPECS)
def test_fake_parse_bad_shows_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"FTQ_FAKE_GPUS: .*expected COUNTxSIZE\[,COUNTxSIZE\], e\.g\. 2x24GiB"):
        FakeProbe.parse(text)


def test_fake_parse_error_quotes_the_bad_part() -> None:
    with pytest.raises(ValueError, match="cannot read '2x'"):
        FakeProbe.parse("1x80GiB,2x")


def test_fake_parse_refuses_absurd_counts() -> None:
    assert len(FakeProbe("256x1GiB").snapshot()) == 256
    with pytest.raises(ValueError, match="more than 256"):
        FakeProbe.parse("1000x24GiB")
    with pytest.raises(ValueError, match="more than 256"):
        FakeProbe.parse("200x24GiB,57x80GiB")
    with pytest.raises(ValueError, match="more than 256"):
        FakeProbe.parse("999999999999999x24GiB")  # refused before it allocates anything


def test_fake_snapshot_is_fully_free_in_index_order() -> None:
    probe = FakeProbe("1x80GiB,2x24GiB")
    gpus = probe.snapshot()
    assert [g.index for g in gpus] == [0, 1, 2]
    assert [g.name for g in gpus] == ["Fake GPU 80GiB", "Fake GPU 24GiB", "Fake GPU 24GiB"]
    assert [g.memory_total for g in gpus] == [80 * GIB, 24 * GIB, 24 * GIB]
    assert all(g.memory_free == g.memory_total and g.memory_used == 0 for g in gpus)
    assert all(g.utilization == 0 and g.processes == () and g.healthy and g.error is None for g in gpus)
    assert [g.pci_bus_id for g in gpus] == ["00000000:00:00.0", "00000000:01:00.0", "00000000:02:00.0"]
    assert sorted(g.pci_bus_id for g in gpus) == [g.pci_bus_id for g in gpus]  # PCI order is index order
    assert probe.description == "fake: 1x80GiB,2x24GiB"


def test_fake_uuids_are_unique_and_stable() -> None:
    uuids = [g.uuid for g in FakeProbe("40x24GiB").snapshot()]
    assert len(set(uuids)) == 40
    assert uuids == [g.uuid for g in FakeProbe("40x80GiB").snapshot()]
    assert uuids[0] == "GPU-fake-0000-0000-0000-000000000000"
    assert uuids[13].startswith("GPU-") and uuids[13].endswith("13")


def test_fake_set_states_a_scenario() -> None:
    probe = FakeProbe("2x24GiB")
    probe.set(1, memory_free=4 * GIB, processes=[GpuProcess(pid=4242, used_memory=20 * GIB)], utilization=97)
    busy = probe.snapshot()[1]
    assert (busy.memory_free, busy.memory_used, busy.utilization) == (4 * GIB, 20 * GIB, 97)
    assert busy.processes == (GpuProcess(4242, 20 * GIB),)
    assert probe.snapshot()[0].memory_free == 24 * GIB  # the other GPU is untouched

    probe.set(0, healthy=False, error="GPU is lost", memory_free=None)
    broken = probe.snapshot()[0]
    assert (broken.healthy, broken.error, broken.memory_free, broken.memory_used) == (False, "GPU is lost", None, 0)


def test_fake_set_rejects_bad_changes() -> None:
    probe = FakeProbe("1x24GiB")
    with pytest.raises(IndexError):
        probe.set(1, memory_free=0)
    with pytest.raises(ValueError):
        probe.set(0, uuid="GPU-other")
    with pytest.raises(TypeError):
        probe.set(0, memory_fre=0)


def test_fake_snapshot_is_a_copy() -> None:
    probe = FakeProbe("1x24GiB")
    probe.snapshot().clear()
    assert len(probe.snapshot()) == 1


def test_make_probe_prefers_the_fake() -> None:
    probe = make_probe("2x24GiB")
    assert isinstance(probe, FakeProbe)
    assert len(probe.snapshot()) == 2


def test_make_probe_fake_error_is_raised_not_hidden() -> None:
    with pytest.raises(ValueError, match="FTQ_FAKE_GPUS"):
        make_probe("2x")


def test_format_bytes() -> None:
    assert format_bytes(24 * GIB) == "24.0 GiB"
    assert format_bytes(512 * 2**20) == "512.0 MiB"
    assert format_bytes(100) == "100 B"
    assert format_bytes(None) == "unknown"


# --- FakeProbe topology ---------------------------------------------------------------------


def fake_uuid(index: int) -> str:
    return f"GPU-fake-0000-0000-0000-{index:012d}"


def fake_distance(probe: FakeProbe, a: int, b: int) -> int:
    return link_distance(probe.topology(), fake_uuid(a), fake_uuid(b))


def test_link_levels_are_strictly_ordered_nvlink_best_unknown_worst() -> None:
    levels = [LINK_NVLINK, LINK_INTERNAL, LINK_SINGLE, LINK_MULTIPLE, LINK_HOSTBRIDGE, LINK_NODE, LINK_SYSTEM]
    assert levels == sorted(set(levels)) and levels[0] == 0 and LINK_UNKNOWN > levels[-1]
    from scheduler.policy.gpu_sets import distance  # placement's default for a missing pair

    assert distance({}, "a", "b") == LINK_UNKNOWN


def test_link_distance_reads_either_order_and_defaults_to_unknown() -> None:
    assert link_distance({("a", "b"): LINK_SINGLE}, "b", "a") == LINK_SINGLE
    assert link_distance({}, "a", "b") == LINK_UNKNOWN
    assert link_distance({}, "a", "a") == LINK_NVLINK


def test_fake_topology_default_is_node_level_for_every_pair() -> None:
    links = FakeProbe("4x24GiB").topology()
    assert len(links) == 12  # both orders of 6 pairs
    assert set(links.values()) == {LINK_NODE}
    assert links[fake_uuid(0), fake_uuid(3)] == links[fake_uuid(3), fake_uuid(0)]
    assert FakeProbe("1x24GiB").topology() == {}


def test_fake_nvlink_islands() -> None:
    probe = FakeProbe("8x80GiB@nvlink4")
    assert all(fake_distance(probe, a, b) == LINK_NVLINK for a in range(4) for b in range(4))
    assert all(fake_distance(probe, a, b) == LINK_NVLINK for a in range(4, 8) for b in range(4, 8))
    assert all(fake_distance(probe, a, b) == LINK_NODE for a in range(4) for b in range(4, 8))
    assert [g.memory_total for g in probe.snapshot()] == [80 * GIB] * 8
    assert probe.description == "fake: 8x80GiB@nvlink4"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4x24GiB@nvlink2/system", {(0, 1): LINK_NVLINK, (2, 3): LINK_NVLINK, (1, 2): LINK_SYSTEM}),
        ("4x24GiB@nvlink2/PIX", {(0, 1): LINK_NVLINK, (0, 3): LINK_SINGLE}),
        ("4x80GiB@nvlink", {(0, 3): LINK_NVLINK, (1, 2): LINK_NVLINK}),  # one NVSwitch fabric
        ("4x80GiB@NVLink4", {(0, 3): LINK_NVLINK}),
        ("2x24GiB@single", {(0, 1): LINK_SINGLE}),
        ("2x24GiB@sys", {(0, 1): LINK_SYSTEM}),
        ("2x24GiB@phb", {(0, 1): LINK_HOSTBRIDGE}),
        ("1x80GiB,1x24GiB @ internal", {(0, 1): LINK_INTERNAL}),
    ],
)
def test_fake_topology_grammar(text: str, expected: dict[tuple[int, int], int]) -> None:
    probe = FakeProbe(text)
    assert {pair: fake_distance(probe, *pair) for pair in expected} == expected
    assert FakeProbe.parse(text) == [g.memory_total for g in probe.snapshot()]


BAD_TOPOLOGIES = ["8x80GiB@", "8x80GiB@pcie", "8x80GiB@nvlink4/far", "8x80GiB@nvlink4@node", "8x80GiB@nvlink-4"]


@pytest.mark.parametrize("text", BAD_TOPOLOGIES)
def test_fake_topology_bad_shows_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"FTQ_FAKE_GPUS: cannot read the topology .*e\.g\. 8x80GiB@nvlink4"):
        FakeProbe.parse(text)


@pytest.mark.parametrize("text", ["8x80GiB@nvlink3", "8x80GiB@nvlink1", "8x80GiB@nvlink0"])
def test_fake_nvlink_islands_must_divide_the_gpus(text: str) -> None:
    with pytest.raises(ValueError, match=r"islands of \d GPUs .* divide the 8 GPUs"):
        FakeProbe(text)


def test_fake_set_link_states_a_pair() -> None:
    probe = FakeProbe("4x24GiB@nvlink2")
    probe.set_link(1, 2, LINK_SINGLE)
    links = probe.topology()
    assert links[fake_uuid(1), fake_uuid(2)] == links[fake_uuid(2), fake_uuid(1)] == LINK_SINGLE
    probe.set_link(3, 0, 7)  # either order, any distance
    assert fake_distance(probe, 0, 3) == 7
    assert fake_distance(probe, 0, 1) == LINK_NVLINK and fake_distance(probe, 1, 3) == LINK_NODE  # others kept


def test_fake_set_link_rejects_bad_links() -> None:
    probe = FakeProbe("2x24GiB")
    with pytest.raises(IndexError):
        probe.set_link(0, 2, LINK_NVLINK)
    with pytest.raises(ValueError, match="itself"):
        probe.set_link(1, 1, LINK_NVLINK)
    for bad in (-1, True, 1.5, "nvlink"):
        with pytest.raises(ValueError, match="int >= 0"):
            probe.set_link(0, 1, bad)  # type: ignore[arg-type]


def test_fake_unhealthy_gpu_has_only_unknown_links() -> None:
    probe = FakeProbe("4x80GiB@nvlink4")
    probe.set(2, healthy=False, error="GPU is lost")
    assert all(fake_distance(probe, 2, k) == fake_distance(probe, k, 2) == LINK_UNKNOWN for k in (0, 1, 3))
    assert fake_distance(probe, 0, 3) == LINK_NVLINK
    probe.set(2, healthy=True, error=None)
    assert fake_distance(probe, 2, 0) == LINK_NVLINK  # the link was hidden, not forgotten


# --- Our processes and foreign ones ---------------------------------------------------------


def write_proc(root: Path, pid: int, ppid: int, comm: str) -> None:
    (root / str(pid)).mkdir()
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0\n")


def scenario_foreign_process_holds_gpu(root: Path) -> tuple[GpuInfo, int]:
    """Someone's notebook holds 20 GiB beside our worker, whose torchrun ranks and data loaders hold the rest.

    The bugs it stands for: a process that is not ours must be reported (placement counts it),
    and one of ours must not, though NVML lists the ranks our worker started, not the worker.
    Returns the GPU and our worker's pid; ``root`` becomes a /proc.
    """
    for pid, ppid, comm in [
        (1, 0, "systemd"),
        (100, 1, "python"),  # our worker: python -m worker RUN_DIR
        (101, 100, "pt_main_thread"),  # torchrun ranks
        (102, 100, "pt_main_thread"),
        (103, 101, "pt_data_worker"),  # a rank's data loader worker
        (104, 103, "a ) tricky (name"),  # comm may hold spaces and parentheses
        (555, 1, "jupyter-lab"),
        (556, 555, "python"),  # the notebook's kernel, holding a GPU
    ]:
        write_proc(root, pid, ppid, comm)
    (root / "self").mkdir()  # not a pid
    (root / "777").mkdir()  # exited between listdir and the read: no stat
    gpu = FakeProbe("1x80GiB").set(
        0,
        memory_free=10 * GIB,
        processes=[GpuProcess(101, 25 * GIB, "python"), GpuProcess(102, 25 * GIB), GpuProcess(556, 20 * GIB, "python")],
    )
    return gpu, 100


def test_foreign_process_holds_gpu(tmp_path: Path) -> None:
    gpu, worker = scenario_foreign_process_holds_gpu(tmp_path)
    assert descendant_pids({worker}, proc=tmp_path) == {101, 102, 103, 104}
    ours = {worker} | descendant_pids({worker}, proc=tmp_path)
    assert foreign_processes(gpu, ours) == (GpuProcess(556, 20 * GIB, "python"),)
    # The bug: the worker's own pid alone makes its ranks look like strangers.
    assert [p.pid for p in foreign_processes(gpu, {worker})] == [101, 102, 556]
    assert foreign_processes(gpu, set()) == gpu.processes


def test_descendant_pids_of_several_roots_and_of_none(tmp_path: Path) -> None:
    scenario_foreign_process_holds_gpu(tmp_path)
    assert descendant_pids({101, 555}, proc=tmp_path) == {103, 104, 556}
    assert descendant_pids({100, 101}, proc=tmp_path) == {101, 102, 103, 104}  # a root below a root is found
    assert descendant_pids(set(), proc=tmp_path) == set()
    assert descendant_pids({4242}, proc=tmp_path) == set()


def test_descendant_pids_without_proc_is_empty(tmp_path: Path) -> None:
    assert descendant_pids({1}, proc=tmp_path / "no-such-proc") == set()  # macOS, Windows


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_descendant_pids_finds_a_real_grandchild() -> None:
    sleeper = (
        "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", sleeper + " print(c.pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert descendant_pids({child.pid}) == {grandchild}
        assert {child.pid, grandchild} <= descendant_pids({os.getpid()})
    finally:
        os.killpg(child.pid, 9)  # the grandchild is in the child's process group
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


# --- NvmlProbe against scenario fakes -------------------------------------------------------


@dataclass
class FakeDevice:
    uuid: str | bytes
    name: str | bytes
    total: int = 24 * GIB
    free: int = 24 * GIB
    used: int = 0
    util: int = 0
    processes: list[SimpleNamespace] = field(default_factory=list)
    bus_id: str | bytes = "00000000:01:00.0"
    fail: dict[str, type[real_nvml.NVMLError]] = field(default_factory=dict)  # NVML function -> error
    graphics: list[SimpleNamespace] = field(default_factory=list)
    nvlinks: dict[int, str] = field(default_factory=dict)  # active link -> the far end's PCI bus id
    nvlink_to: int = real_nvml.NVML_NVLINK_DEVICE_TYPE_GPU  # what its links reach: GPUs or NVSwitches


class FakeNvml:
    """Just enough of pynvml's surface, with its real exception classes and return shapes."""

    NVMLError = real_nvml.NVMLError
    NVMLError_NotSupported = real_nvml.NVMLError_NotSupported
    NVML_FEATURE_ENABLED = real_nvml.NVML_FEATURE_ENABLED
    NVML_FEATURE_DISABLED = real_nvml.NVML_FEATURE_DISABLED
    NVML_NVLINK_MAX_LINKS = real_nvml.NVML_NVLINK_MAX_LINKS
    NVML_NVLINK_DEVICE_TYPE_GPU = real_nvml.NVML_NVLINK_DEVICE_TYPE_GPU
    NVML_NVLINK_DEVICE_TYPE_SWITCH = real_nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
    NVML_TOPOLOGY_INTERNAL = real_nvml.NVML_TOPOLOGY_INTERNAL
    NVML_TOPOLOGY_SINGLE = real_nvml.NVML_TOPOLOGY_SINGLE
    NVML_TOPOLOGY_MULTIPLE = real_nvml.NVML_TOPOLOGY_MULTIPLE
    NVML_TOPOLOGY_HOSTBRIDGE = real_nvml.NVML_TOPOLOGY_HOSTBRIDGE
    NVML_TOPOLOGY_NODE = real_nvml.NVML_TOPOLOGY_NODE
    NVML_TOPOLOGY_SYSTEM = real_nvml.NVML_TOPOLOGY_SYSTEM
    LINKS_PER_GPU = 18  # an H100's; past it NVML answers Invalid Argument

    def __init__(self, devices: list[FakeDevice], init_error: type[real_nvml.NVMLError] | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.count_error: type[real_nvml.NVMLError] | None = None
        self.inits = 0
        self.shutdowns = 0
        self.ancestors: dict[frozenset[str], int] = {}  # {uuid, uuid} -> NVML_TOPOLOGY_*; missing: Not Supported
        self.names: dict[int, str | type[real_nvml.NVMLError]] = {}  # pid -> name; missing: Not Found
        self.calls: Counter[str] = Counter()

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error()
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        if self.count_error is not None:
            raise self.count_error()
        return len(self.devices)

    def _device(self, handle: FakeDevice, call: str) -> FakeDevice:
        self.calls[call] += 1
        if call in handle.fail:
            raise handle.fail[call]()
        return handle

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self._device(self.devices[index], "nvmlDeviceGetHandleByIndex")

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> str | bytes:
        return self._device(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeDevice) -> str | bytes:
        return self._device(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> SimpleNamespace:
        device = self._device(handle, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=device.total, free=device.free, used=device.used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeDevice) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._device(handle, "nvmlDeviceGetUtilizationRates").util, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list[SimpleNamespace]:
        return self._device(handle, "nvmlDeviceGetComputeRunningProcesses").processes

    def nvmlDeviceGetPciInfo(self, handle: FakeDevice) -> SimpleNamespace:
        return SimpleNamespace(busId=self._device(handle, "nvmlDeviceGetPciInfo").bus_id)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeDevice) -> list[SimpleNamespace]:
        return self._device(handle, "nvmlDeviceGetGraphicsRunningProcesses").graphics

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        name = self.names.get(pid, real_nvml.NVMLError_NotFound)
        if isinstance(name, type):
            raise name()
        return name

    def nvmlDeviceGetNvLinkState(self, handle: FakeDevice, link: int) -> int:
        device = self._device(handle, "nvmlDeviceGetNvLinkState")
        if not device.nvlinks:
            raise real_nvml.NVMLError_NotSupported()  # a GPU without NVLink
        if link >= self.LINKS_PER_GPU:
            raise real_nvml.NVMLError_InvalidArgument()
        return self.NVML_FEATURE_ENABLED if link in device.nvlinks else self.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: FakeDevice, link: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self._device(handle, "nvmlDeviceGetNvLinkRemotePciInfo").nvlinks[link])

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: FakeDevice, link: int) -> int:
        return self._device(handle, "nvmlDeviceGetNvLinkRemoteDeviceType").nvlink_to

    def nvmlDeviceGetTopologyCommonAncestor(self, first: FakeDevice, second: FakeDevice) -> int:
        self._device(first, "nvmlDeviceGetTopologyCommonAncestor")
        self._device(second, "nvmlDeviceGetTopologyCommonAncestor")
        pair = frozenset(str(d.uuid) for d in (first, second))
        if pair not in self.ancestors:
            raise real_nvml.NVMLError_NotSupported()
        return self.ancestors[pair]


def process(pid: int, used: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)


def scenario_two_healthy_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeDevice(
                "GPU-aaaa",
                "NVIDIA A10G",
                free=20 * GIB,
                used=4 * GIB,
                util=35,
                processes=[process(1234, 4 * GIB)],
                bus_id="00000000:00:1E.0",
            ),
            FakeDevice("GPU-bbbb", "NVIDIA A10G", bus_id="00000000:00:1F.0"),
        ]
    )


def scenario_failing_one_gpu() -> FakeNvml:
    """gpustat's bug: one GPU with a lost handle made the whole listing fail."""
    nvml = scenario_two_healthy_gpus()
    lost = {"nvmlDeviceGetHandleByIndex": real_nvml.NVMLError_GpuIsLost}
    nvml.devices.insert(0, FakeDevice("GPU-lost", "NVIDIA A10G", fail=lost))
    no_memory = {"nvmlDeviceGetMemoryInfo": real_nvml.NVMLError_Unknown}
    nvml.devices.append(FakeDevice("GPU-nomem", "NVIDIA A10G", fail=no_memory))
    return nvml


def scenario_utilization_not_supported() -> FakeNvml:
    """MIG and some vGPUs answer Not Supported; reading that as 0% would call a busy GPU idle."""
    nvml = scenario_two_healthy_gpus()
    nvml.devices[0].fail["nvmlDeviceGetUtilizationRates"] = real_nvml.NVMLError_NotSupported
    nvml.devices[0].fail["nvmlDeviceGetComputeRunningProcesses"] = real_nvml.NVMLError_NoPermission
    nvml.devices[1].util = 2**32 - 1  # an older binding passes NVML_VALUE_NOT_AVAILABLE_uint through
    return nvml


def scenario_process_memory_unavailable() -> FakeNvml:
    """WDDM and containers: pynvml gives usedGpuMemory None, older bindings the 2**64-1 sentinel."""
    nvml = scenario_two_healthy_gpus()
    nvml.devices[1].processes = [process(7, None), process(8, real_nvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value)]
    return nvml


def scenario_bytes_from_old_bindings() -> FakeNvml:
    """pynvml before 11.5 returned bytes for names, UUIDs and bus ids."""
    return FakeNvml([FakeDevice(b"GPU-cccc", b"Tesla T4", bus_id=b"00000000:3B:00.0")])


def scenario_graphics_process_holds_memory() -> FakeNvml:
    """A desktop's Xorg holds memory as a graphics process; listing compute processes alone hid it."""
    nvml = scenario_two_healthy_gpus()
    gpu = nvml.devices[0]
    gpu.processes.append(process(4321, 2 * GIB))
    gpu.graphics = [process(900, 512 * 2**20), process(1234, 4 * GIB)]  # a CUDA + GL process is in both lists
    nvml.names = {1234: "python3", 900: "/usr/lib/xorg/Xorg", 4321: real_nvml.NVMLError_NoPermission}
    return nvml


BUS = ["00000000:17:00.0", "00000000:65:00.0", "00000000:CA:00.0", "00000000:E3:00.0"]


def scenario_nvlink_pairs() -> FakeNvml:
    """GPUs 0 and 1 joined by an NVLink bridge, 2 and 3 on one PCIe switch, the pairs on two sockets.

    The bug it stands for: a 2-GPU job put on GPUs 1 and 2 (PCIe, across sockets) while 0 and 1
    sat idle with an NVLink between them. GPU 1 names its peer in the legacy 4-digit-domain,
    lower-case spelling; NVLink wins over the common ancestor NVML reports for the same pair.
    """
    nvml = FakeNvml(
        [
            FakeDevice("GPU-nv-0", "NVIDIA RTX A6000", bus_id=BUS[0], nvlinks={0: BUS[1], 1: BUS[1], 2: BUS[1]}),
            FakeDevice("GPU-nv-1", "NVIDIA RTX A6000", bus_id=BUS[1], nvlinks={0: "0000:17:00.0", 3: "0000:17:00.0"}),
            FakeDevice("GPU-pcie-2", "NVIDIA RTX A6000", bus_id=BUS[2]),
            FakeDevice("GPU-pcie-3", "NVIDIA RTX A6000", bus_id=BUS[3]),
        ]
    )
    nvml.ancestors = {frozenset({"GPU-nv-0", "GPU-nv-1"}): real_nvml.NVML_TOPOLOGY_NODE}
    nvml.ancestors[frozenset({"GPU-pcie-2", "GPU-pcie-3"})] = real_nvml.NVML_TOPOLOGY_SINGLE
    for a in ("GPU-nv-0", "GPU-nv-1"):
        for b in ("GPU-pcie-2", "GPU-pcie-3"):
            nvml.ancestors[frozenset({a, b})] = real_nvml.NVML_TOPOLOGY_SYSTEM
    return nvml


def scenario_nvlink_chain() -> FakeNvml:
    """GPUs 0-1 and 1-2 linked, 0-2 not (a hybrid cube mesh in small): both reaching 1 makes no link."""
    devices = [FakeDevice(f"GPU-chain-{i}", "Tesla V100", bus_id=BUS[i]) for i in range(3)]
    devices[0].nvlinks = {0: BUS[1]}
    devices[1].nvlinks = {0: BUS[0], 1: BUS[2]}
    devices[2].nvlinks = {0: BUS[1]}
    nvml = FakeNvml(devices)
    nvml.ancestors = {frozenset({a.uuid, b.uuid}): real_nvml.NVML_TOPOLOGY_HOSTBRIDGE for a in devices for b in devices}
    return nvml


def scenario_nvswitch_fabric() -> FakeNvml:
    """HGX H100: every NVLink ends at an NVSwitch, none at a GPU; all GPUs that share a switch are peers."""
    switches = ["00000000:0A:00.0", "00000000:0B:00.0", "00000000:0C:00.0", "00000000:0D:00.0"]
    switch = real_nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
    links = {link: switches[link % 4] for link in range(18)}
    return FakeNvml(
        [FakeDevice(f"GPU-h100-{i}", "H100", bus_id=BUS[i], nvlinks=links, nvlink_to=switch) for i in range(4)]
    )


def scenario_topology_call_fails() -> FakeNvml:
    """The bug: an exception from a topology query (vGPU, old driver, a GPU off the bus) took the tick down.

    GPU a refuses every topology query, GPU 2 has no handle, GPU nomem answers topology but not memory.
    """
    nvml = FakeNvml(
        [
            FakeDevice(
                "GPU-a",
                "NVIDIA A10G",
                bus_id=BUS[0],
                fail={
                    "nvmlDeviceGetTopologyCommonAncestor": real_nvml.NVMLError_NotSupported,
                    "nvmlDeviceGetNvLinkState": real_nvml.NVMLError_Unknown,
                },
            ),
            FakeDevice("GPU-b", "NVIDIA A10G", bus_id=BUS[1]),
            FakeDevice("GPU-lost", "NVIDIA A10G", fail={"nvmlDeviceGetHandleByIndex": real_nvml.NVMLError_GpuIsLost}),
            FakeDevice(
                "GPU-nomem", "NVIDIA A10G", bus_id=BUS[3], fail={"nvmlDeviceGetMemoryInfo": real_nvml.NVMLError_Unknown}
            ),
        ]
    )
    nvml.ancestors = {frozenset({"GPU-b", "GPU-nomem"}): real_nvml.NVML_TOPOLOGY_SINGLE}
    return nvml


def scenario_driver_not_loaded() -> FakeNvml:
    return FakeNvml([], init_error=real_nvml.NVMLError_DriverNotLoaded)


def scenario_library_not_found() -> FakeNvml:
    return FakeNvml([], init_error=real_nvml.NVMLError_LibraryNotFound)


@pytest.fixture
def use_nvml(monkeypatch: pytest.MonkeyPatch):
    def install(fake: FakeNvml | None) -> FakeNvml | None:
        monkeypatch.setitem(sys.modules, "pynvml", fake)  # None makes `import pynvml` fail
        return fake

    return install


def test_two_healthy_gpus(use_nvml) -> None:
    nvml = use_nvml(scenario_two_healthy_gpus())
    probe = make_probe(None)
    assert isinstance(probe, NvmlProbe)
    assert probe.description == "NVML 550.54.15, 2 GPUs"  # known from make_probe on, before a snapshot
    first, second = probe.snapshot()
    assert first == GpuInfo(
        uuid="GPU-aaaa",
        index=0,
        name="NVIDIA A10G",
        memory_total=24 * GIB,
        memory_free=20 * GIB,
        memory_used=4 * GIB,
        utilization=35,
        processes=(GpuProcess(1234, 4 * GIB),),
        pci_bus_id="00000000:00:1E.0",
    )
    assert (second.uuid, second.index, second.healthy, second.processes) == ("GPU-bbbb", 1, True, ())
    assert probe.description == "NVML 550.54.15, 2 GPUs"
    probe.close()
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_nvml_starts_lazily_once_and_closes_once(use_nvml) -> None:
    nvml = use_nvml(scenario_two_healthy_gpus())
    probe = NvmlProbe()
    assert nvml.inits == 0 and probe.description == "NVML (not started)"
    probe.snapshot()
    probe.snapshot()
    assert nvml.inits == 1
    probe.close()
    probe.close()
    assert nvml.shutdowns == 1


def test_failing_one_gpu(use_nvml) -> None:
    use_nvml(scenario_failing_one_gpu())
    lost, good, idle, nomem = make_probe(None).snapshot()
    assert (lost.healthy, lost.error, lost.uuid, lost.memory_free) == (False, "GPU is lost", "unknown-0", None)
    assert (nomem.healthy, nomem.error, nomem.uuid, nomem.memory_total) == (False, "Unknown Error", "GPU-nomem", None)
    assert good.healthy and idle.healthy and good.memory_free == 20 * GIB and idle.uuid == "GPU-bbbb"
    assert [g.index for g in (lost, good, idle, nomem)] == [0, 1, 2, 3]


def test_utilization_not_supported(use_nvml) -> None:
    use_nvml(scenario_utilization_not_supported())
    mig, old = make_probe(None).snapshot()
    assert mig.utilization is None and old.utilization is None
    assert mig.processes == () and mig.healthy and mig.error is None  # a missing field is not a broken GPU
    assert mig.memory_free == 20 * GIB


def test_process_memory_unavailable(use_nvml) -> None:
    use_nvml(scenario_process_memory_unavailable())
    gpu = make_probe(None).snapshot()[1]
    assert gpu.processes == (GpuProcess(7, None), GpuProcess(8, None))


def test_graphics_process_holds_memory(use_nvml) -> None:
    use_nvml(scenario_graphics_process_holds_memory())
    gpu = make_probe(None).snapshot()[0]
    assert gpu.processes == (
        GpuProcess(1234, 4 * GIB, "python3"),
        GpuProcess(4321, 2 * GIB, None),  # NVML may not name it: not allowed to read it
        GpuProcess(900, 512 * 2**20, "/usr/lib/xorg/Xorg"),
    )
    assert GpuProcess(7, None) == GpuProcess(pid=7, used_memory=None, name=None)  # the old constructor


def test_nvlink_pairs(use_nvml) -> None:
    use_nvml(scenario_nvlink_pairs())
    probe = make_probe(None)
    links = probe.topology()
    assert len(links) == 12  # both orders of 6 pairs
    assert links["GPU-nv-0", "GPU-nv-1"] == links["GPU-nv-1", "GPU-nv-0"] == LINK_NVLINK
    assert links["GPU-pcie-2", "GPU-pcie-3"] == LINK_SINGLE
    assert {links[a, b] for a in ("GPU-nv-0", "GPU-nv-1") for b in ("GPU-pcie-2", "GPU-pcie-3")} == {LINK_SYSTEM}
    assert link_distance(links, "GPU-pcie-3", "GPU-pcie-2") == LINK_SINGLE


def test_nvlink_seen_from_one_side_is_enough(use_nvml) -> None:
    nvml = use_nvml(scenario_nvlink_pairs())
    nvml.devices[1].fail["nvmlDeviceGetNvLinkRemotePciInfo"] = real_nvml.NVMLError_Unknown
    assert make_probe(None).topology()["GPU-nv-1", "GPU-nv-0"] == LINK_NVLINK


def test_nvlink_chain_is_not_transitive(use_nvml) -> None:
    use_nvml(scenario_nvlink_chain())
    links = make_probe(None).topology()
    assert links["GPU-chain-0", "GPU-chain-1"] == links["GPU-chain-1", "GPU-chain-2"] == LINK_NVLINK
    assert links["GPU-chain-0", "GPU-chain-2"] == LINK_HOSTBRIDGE


def test_nvswitch_fabric_links_every_pair(use_nvml) -> None:
    use_nvml(scenario_nvswitch_fabric())
    links = make_probe(None).topology()
    assert len(links) == 12 and set(links.values()) == {LINK_NVLINK}


def test_topology_call_fails(use_nvml) -> None:
    nvml = use_nvml(scenario_topology_call_fails())
    probe = make_probe(None)
    links = probe.topology()  # before any snapshot: no exception, unknown where unreadable
    assert links["GPU-a", "GPU-b"] == links["GPU-b", "GPU-a"] == LINK_UNKNOWN
    assert {d for pair, d in links.items() if "unknown-2" in pair} == {LINK_UNKNOWN}
    assert links["GPU-b", "GPU-nomem"] == LINK_SINGLE  # not known to be unhealthy yet
    assert not probe.snapshot()[3].healthy
    assert probe.topology()["GPU-nomem", "GPU-b"] == LINK_UNKNOWN  # unhealthy now: not placeable together
    nvml.count_error = real_nvml.NVMLError_GpuIsLost
    fresh = NvmlProbe()
    assert fresh.topology() == {}  # cannot count the GPUs: no links, still no exception


def test_topology_is_read_once_and_again_when_the_gpus_change(use_nvml) -> None:
    nvml = use_nvml(scenario_nvlink_pairs())
    probe = make_probe(None)
    first = probe.topology()
    reads = nvml.calls["nvmlDeviceGetTopologyCommonAncestor"]
    assert reads > 0
    probe.snapshot()
    assert probe.topology() == first and probe.topology() is not first  # a copy each time
    assert nvml.calls["nvmlDeviceGetTopologyCommonAncestor"] == reads
    nvml.devices.pop()  # a GPU went away
    probe.snapshot()
    assert len(probe.topology()) == 6 and nvml.calls["nvmlDeviceGetTopologyCommonAncestor"] > reads
    probe.close()
    assert NoGpuProbe("no GPUs").topology() == {}


def test_bytes_from_old_bindings(use_nvml) -> None:
    use_nvml(scenario_bytes_from_old_bindings())
    (gpu,) = make_probe(None).snapshot()
    assert (gpu.uuid, gpu.name, gpu.pci_bus_id) == ("GPU-cccc", "Tesla T4", "00000000:3B:00.0")


def test_library_missing(use_nvml) -> None:
    use_nvml(None)
    probe = make_probe(None)
    assert isinstance(probe, NoGpuProbe)
    assert probe.snapshot() == []
    assert "pip install nvidia-ml-py" in probe.description and "FTQ_FAKE_GPUS" in probe.description
    assert probe.description.startswith("no GPUs")
    probe.close()


@pytest.mark.parametrize(
    ("scenario", "message"),
    [(scenario_driver_not_loaded, "Driver Not Loaded"), (scenario_library_not_found, "NVML Shared Library Not Found")],
)
def test_driver_not_loaded(use_nvml, scenario, message: str) -> None:
    use_nvml(scenario())
    probe = make_probe(None)
    assert probe.snapshot() == []
    assert probe.description.startswith(f"no GPUs: NVML could not start ({message})")
    assert "nvidia-smi" in probe.description and "FTQ_FAKE_GPUS=2x24GiB" in probe.description


def test_gpus_vanish_after_start_is_an_error_not_an_empty_list(use_nvml) -> None:
    nvml = use_nvml(scenario_two_healthy_gpus())
    probe = make_probe(None)
    assert len(probe.snapshot()) == 2
    nvml.count_error = real_nvml.NVMLError_GpuIsLost
    with pytest.raises(ProbeError, match="GPU is lost"):
        probe.snapshot()


def test_real_nvml_on_this_machine_never_crashes() -> None:
    """With or without a GPU here, make_probe gives a working probe and an honest description."""
    probe = make_probe(None)
    try:
        gpus = probe.snapshot()
        assert gpus or probe.description.startswith("no GPUs") or probe.description.endswith(", 0 GPUs")
    finally:
        probe.close()


def test_real_nvml_topology_on_this_machine_never_crashes() -> None:
    probe = NvmlProbe()  # not make_probe: straight at the real library, driver or not
    try:
        links = probe.topology()
        assert all(isinstance(d, int) and (a, b) != (b, a) for (a, b), d in links.items())
    finally:
        probe.close()


def test_the_fake_and_the_real_binding_have_every_name_the_probe_uses() -> None:
    """The fake answers for pynvml in these tests; a name it or pynvml lacks would only fail on a real GPU."""
    import scheduler.gpus.nvml

    source = Path(scheduler.gpus.nvml.__file__).read_text()
    names = set(re.findall(r"\bnvml\.(\w+)", source)) | set(re.findall(r'"(NVML_TOPOLOGY_\w+)"', source))
    assert {"nvmlDeviceGetTopologyCommonAncestor", "nvmlDeviceGetNvLinkState", "NVML_TOPOLOGY_SYSTEM"} <= names
    assert [n for n in sorted(names) if not hasattr(real_nvml, n)] == []
    assert [n for n in sorted(names) if not hasattr(FakeNvml, n)] == []


def test_fake_probe_module_imports_first_too() -> None:
    code = "import scheduler.gpus.fake as f, scheduler.gpus.probe as p; assert p.FakeProbe is f.FakeProbe"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_probe_imports_neither_torch_nor_pynvml() -> None:
    code = "import sys, scheduler.gpus.probe; print(sorted(m for m in ('torch', 'pynvml') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
