"""GPU probes without a GPU: FakeProbe parsing, and NvmlProbe against scenario fakes of pynvml.

Each scenario is named after the bug it stands for (gpustat's ``scenario_failing_one_gpu``).
The fakes raise pynvml's own exception classes, so messages are the ones NVML gives.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml as real_nvml
import pytest

from scheduler.probe import (
    FakeProbe,
    GiB,
    GpuInfo,
    GpuProcess,
    NoGpuProbe,
    NvmlProbe,
    ProbeError,
    format_bytes,
    make_probe,
)

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
    assert [g.memory_total for g in gpus] == [80 * GiB, 24 * GiB, 24 * GiB]
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
    probe.set(1, memory_free=4 * GiB, processes=[GpuProcess(pid=4242, used_memory=20 * GiB)], utilization=97)
    busy = probe.snapshot()[1]
    assert (busy.memory_free, busy.memory_used, busy.utilization) == (4 * GiB, 20 * GiB, 97)
    assert busy.processes == (GpuProcess(4242, 20 * GiB),)
    assert probe.snapshot()[0].memory_free == 24 * GiB  # the other GPU is untouched

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
    assert format_bytes(24 * GiB) == "24.0 GiB"
    assert format_bytes(512 * 2**20) == "512.0 MiB"
    assert format_bytes(100) == "100 B"
    assert format_bytes(None) == "unknown"


# --- NvmlProbe against scenario fakes -------------------------------------------------------


@dataclass
class FakeDevice:
    uuid: str | bytes
    name: str | bytes
    total: int = 24 * GiB
    free: int = 24 * GiB
    used: int = 0
    util: int = 0
    processes: list[SimpleNamespace] = field(default_factory=list)
    bus_id: str | bytes = "00000000:01:00.0"
    fail: dict[str, type[real_nvml.NVMLError]] = field(default_factory=dict)  # NVML function -> error


class FakeNvml:
    """Just enough of pynvml's surface, with its real exception classes and return shapes."""

    NVMLError = real_nvml.NVMLError
    NVMLError_NotSupported = real_nvml.NVMLError_NotSupported

    def __init__(self, devices: list[FakeDevice], init_error: type[real_nvml.NVMLError] | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.count_error: type[real_nvml.NVMLError] | None = None
        self.inits = 0
        self.shutdowns = 0

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


def process(pid: int, used: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)


def scenario_two_healthy_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeDevice(
                "GPU-aaaa",
                "NVIDIA A10G",
                free=20 * GiB,
                used=4 * GiB,
                util=35,
                processes=[process(1234, 4 * GiB)],
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
        memory_total=24 * GiB,
        memory_free=20 * GiB,
        memory_used=4 * GiB,
        utilization=35,
        processes=(GpuProcess(1234, 4 * GiB),),
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
    assert good.healthy and idle.healthy and good.memory_free == 20 * GiB and idle.uuid == "GPU-bbbb"
    assert [g.index for g in (lost, good, idle, nomem)] == [0, 1, 2, 3]


def test_utilization_not_supported(use_nvml) -> None:
    use_nvml(scenario_utilization_not_supported())
    mig, old = make_probe(None).snapshot()
    assert mig.utilization is None and old.utilization is None
    assert mig.processes == () and mig.healthy and mig.error is None  # a missing field is not a broken GPU
    assert mig.memory_free == 20 * GiB


def test_process_memory_unavailable(use_nvml) -> None:
    use_nvml(scenario_process_memory_unavailable())
    gpu = make_probe(None).snapshot()[1]
    assert gpu.processes == (GpuProcess(7, None), GpuProcess(8, None))


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


def test_importing_the_probe_imports_neither_torch_nor_pynvml() -> None:
    code = "import sys, scheduler.probe; print(sorted(m for m in ('torch', 'pynvml') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
