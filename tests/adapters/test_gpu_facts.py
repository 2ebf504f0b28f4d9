"""GPU facts: NVML through a stand-in module, and nvidia-smi output as captured.

No NVIDIA driver runs here, so NVML is a fake with pynvml's names; mypy checks it
against ``adapters.facts.gpu.Nvml``. nvidia-smi runs for real as a script that
prints captured output.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pytest

from adapters.facts import (
    FactsError,
    GpuFacts,
    Nvml,
    collect,
    parse_nvidia_smi,
    parse_nvidia_smi_cuda_version,
    parse_probe_output,
    read_gpus,
)
from adapters.facts import probe as probe_module

# --- a stand-in for pynvml ------------------------------------------------------


class FakeNVMLError(Exception):
    STRINGS: ClassVar[dict[int, str]] = {
        3: "Not Supported",
        9: "Driver Not Loaded",
        12: "NVML Shared Library Not Found",
    }

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self.STRINGS.get(self.value, f"NVML Error with code {self.value}")


class FakeLibraryNotFound(FakeNVMLError):
    def __init__(self) -> None:
        super().__init__(12)


class FakeDriverNotLoaded(FakeNVMLError):
    def __init__(self) -> None:
        super().__init__(9)


class Memory(NamedTuple):
    total: int
    free: int
    used: int


@dataclass
class Device:
    uuid: str | bytes
    name: str | bytes
    total: int
    free: int
    capability: tuple[int, int]
    power: int | Exception
    limit: int | Exception
    temperature: int | Exception
    broken: Exception | None = None


def _value(reading: int | Exception) -> int:
    if isinstance(reading, Exception):
        raise reading
    return reading


@dataclass
class FakeNvml:
    devices: list[Device]
    init_error: Exception | None = None
    count_error: Exception | None = None
    driver: str | bytes = "550.54.15"
    cuda: int = 12040
    calls: list[str] = field(default_factory=list)

    NVMLError = FakeNVMLError
    NVMLError_LibraryNotFound = FakeLibraryNotFound
    NVMLError_DriverNotLoaded = FakeDriverNotLoaded
    NVML_TEMPERATURE_GPU = 0

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        if self.count_error is not None:
            raise self.count_error
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Device:
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle: Device) -> str | bytes:
        if handle.broken is not None:
            raise handle.broken
        return handle.uuid

    def nvmlDeviceGetName(self, handle: Device) -> str | bytes:
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: Device) -> Memory:
        return Memory(total=handle.total, free=handle.free, used=handle.total - handle.free)

    def nvmlDeviceGetCudaComputeCapability(self, handle: Device) -> tuple[int, int]:
        return handle.capability

    def nvmlDeviceGetPowerUsage(self, handle: Device) -> int:
        return _value(handle.power)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Device) -> int:
        return _value(handle.limit)

    def nvmlDeviceGetTemperature(self, handle: Device, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return _value(handle.temperature)


GIB = 1024**3
A100 = Device(
    uuid="GPU-5d5a2a3c-8f1e-6b3c-3a2c-8c8a2b5e4f10",
    name="NVIDIA A100-SXM4-80GB",
    total=80 * GIB,
    free=79 * GIB,
    capability=(8, 0),
    power=61523,
    limit=400000,
    temperature=34,
)
H100 = Device(
    uuid="GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
    name="NVIDIA H100 80GB HBM3",
    total=80 * GIB,
    free=3 * GIB,
    capability=(9, 0),
    power=312000,
    limit=700000,
    temperature=61,
)


def _check_protocol(nvml: Nvml) -> Nvml:
    return nvml


# --- NVML -----------------------------------------------------------------------


def test_two_gpus_with_every_reading() -> None:
    nvml = FakeNvml([A100, H100])
    gpus, note = read_gpus(_check_protocol(nvml))

    assert note is None
    assert gpus == [
        GpuFacts(
            index=0,
            uuid="GPU-5d5a2a3c-8f1e-6b3c-3a2c-8c8a2b5e4f10",
            name="NVIDIA A100-SXM4-80GB",
            memory_total_bytes=85899345920,
            memory_free_bytes=84825604096,
            driver_version="550.54.15",
            cuda_driver_version="12.4",
            compute_capability="8.0",
            power_draw_mw=61523,
            power_limit_mw=400000,
            temperature_c=34,
        ),
        GpuFacts(
            index=1,
            uuid="GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
            name="NVIDIA H100 80GB HBM3",
            memory_total_bytes=85899345920,
            memory_free_bytes=3221225472,
            driver_version="550.54.15",
            cuda_driver_version="12.4",
            compute_capability="9.0",
            power_draw_mw=312000,
            power_limit_mw=700000,
            temperature_c=61,
        ),
    ]
    assert nvml.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("version", "text"), [(12040, "12.4"), (11080, "11.8"), (12000, "12.0"), (10010, "10.1")]
)
def test_cuda_driver_version_integer_as_text(version: int, text: str) -> None:
    assert probe_module.cuda_version_text(version) == text


def test_failing_optional_readings_become_none() -> None:
    quiet = Device(
        uuid="GPU-q",
        name="Tesla T4",
        total=15 * GIB,
        free=15 * GIB,
        capability=(7, 5),
        power=FakeNVMLError(3),
        limit=70000,
        temperature=FakeNVMLError(3),
    )
    (gpu,) = read_gpus(FakeNvml([quiet]))[0]

    assert (gpu.power_draw_mw, gpu.temperature_c) == (None, None)
    assert (gpu.power_limit_mw, gpu.compute_capability, gpu.name) == (70000, "7.5", "Tesla T4")
    assert gpu.memory_total_bytes == 15 * GIB


def test_bytes_from_older_pynvml_are_decoded() -> None:
    old = Device(
        uuid=b"GPU-0b1c",
        name=b"Tesla V100-SXM2-16GB",
        total=16 * GIB,
        free=16 * GIB,
        capability=(7, 0),
        power=40000,
        limit=300000,
        temperature=30,
    )
    (gpu,) = read_gpus(FakeNvml([old], driver=b"470.223.02"))[0]

    assert (gpu.uuid, gpu.name, gpu.driver_version) == (
        "GPU-0b1c",
        "Tesla V100-SXM2-16GB",
        "470.223.02",
    )


@pytest.mark.parametrize(
    ("error", "note"),
    [
        (FakeLibraryNotFound(), "NVML library not found (no NVIDIA driver)"),
        (FakeDriverNotLoaded(), "NVIDIA driver not loaded"),
        (FakeNVMLError(999), "NVML init failed: NVML Error with code 999"),
    ],
)
def test_failed_init_is_a_fact_not_an_error(error: Exception, note: str) -> None:
    nvml = FakeNvml([A100], init_error=error)
    assert read_gpus(nvml) == ([], note)
    assert nvml.calls == ["init"]  # nothing to shut down


def test_shutdown_follows_every_successful_init() -> None:
    failing_count = FakeNvml([A100], count_error=FakeNVMLError(999))
    assert read_gpus(failing_count) == ([], "NVML query failed: NVML Error with code 999")
    assert failing_count.calls == ["init", "shutdown"]

    lost = replace(A100, broken=FakeNVMLError(15))
    one_lost = FakeNvml([lost, H100])
    gpus, note = read_gpus(one_lost)
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3"]
    assert gpus[0].index == 1
    assert note == "NVML could not read GPU 0: NVML Error with code 15"
    assert one_lost.calls == ["init", "shutdown"]

    crashing = FakeNvml([replace(A100, broken=RuntimeError("bug"))])
    with pytest.raises(RuntimeError, match="bug"):
        read_gpus(crashing)
    assert crashing.calls == ["init", "shutdown"]


def test_no_devices_says_so() -> None:
    assert read_gpus(FakeNvml([])) == ([], "NVML reports no GPUs")


def test_real_pynvml_on_this_host() -> None:
    """Whatever this host has, the real bindings give a valid answer."""
    pynvml = pytest.importorskip("pynvml")
    gpus, note = read_gpus(pynvml)
    assert gpus or note


# --- nvidia-smi -----------------------------------------------------------------

SMI_CSV = (
    "0, GPU-5d5a2a3c-8f1e-6b3c-3a2c-8c8a2b5e4f10, NVIDIA A100-SXM4-80GB, 81920, 81037,"
    " 535.161.08, 8.0, 61.52, 400.00, 34\n"
    "1, GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0, NVIDIA A100-SXM4-80GB, 81920, 3, 535.161.08,"
    " 8.0, [N/A], 400.00, [N/A]\n"
)
SMI_BANNER = """\
Tue Jun  4 10:12:01 2024
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.161.08             Driver Version: 535.161.08   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
"""


def test_nvidia_smi_csv_with_a_missing_reading() -> None:
    cuda = parse_nvidia_smi_cuda_version(SMI_BANNER)
    assert cuda == "12.2"
    assert parse_nvidia_smi(SMI_CSV, cuda) == [
        GpuFacts(
            index=0,
            uuid="GPU-5d5a2a3c-8f1e-6b3c-3a2c-8c8a2b5e4f10",
            name="NVIDIA A100-SXM4-80GB",
            memory_total_bytes=81920 * 1024 * 1024,
            memory_free_bytes=81037 * 1024 * 1024,
            driver_version="535.161.08",
            cuda_driver_version="12.2",
            compute_capability="8.0",
            power_draw_mw=61520,
            power_limit_mw=400000,
            temperature_c=34,
        ),
        GpuFacts(
            index=1,
            uuid="GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
            name="NVIDIA A100-SXM4-80GB",
            memory_total_bytes=81920 * 1024 * 1024,
            memory_free_bytes=3 * 1024 * 1024,
            driver_version="535.161.08",
            cuda_driver_version="12.2",
            compute_capability="8.0",
            power_draw_mw=None,
            power_limit_mw=400000,
            temperature_c=None,
        ),
    ]
    assert parse_nvidia_smi_cuda_version("no banner") is None


def test_nvidia_smi_output_that_does_not_fit_the_query() -> None:
    with pytest.raises(FactsError, match="expected 10"):
        parse_nvidia_smi("0, GPU-1, Tesla T4, 15360\n")
    with pytest.raises(FactsError, match=r"compute_cap '\[N/A\]' is not major\.minor"):
        parse_nvidia_smi(SMI_CSV.replace("8.0", "[N/A]"))


def _fake_smi(tmp_path: Path, csv_text: str, rc: int = 0) -> str:
    """An executable that answers like nvidia-smi: the query as CSV, else the banner."""
    (tmp_path / "query.csv").write_text(csv_text)
    (tmp_path / "banner.txt").write_text(SMI_BANNER)
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --query-gpu=*) cat "{tmp_path}/query.csv"; exit {rc};; esac\n'
        f'cat "{tmp_path}/banner.txt"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_probe_falls_back_to_nvidia_smi(tmp_path: Path) -> None:
    smi = _fake_smi(tmp_path, SMI_CSV)
    facts = parse_probe_output(json.dumps(collect(["/"], use_pynvml=False, nvidia_smi=smi)))

    assert facts.sources[1:] == ["nvidia-smi"]
    assert facts.gpu_note is None
    assert [(g.index, g.cuda_driver_version, g.power_draw_mw) for g in facts.gpus] == [
        (0, "12.2", 61520),
        (1, "12.2", None),
    ]


def test_nvidia_smi_that_cannot_reach_the_driver(tmp_path: Path) -> None:
    message = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n"
    )
    smi = _fake_smi(tmp_path, message, rc=9)
    gpus, note = probe_module.collect_gpus_smi(smi)
    assert gpus == []
    assert note == "nvidia-smi failed: " + message.strip()


def test_no_bindings_and_no_nvidia_smi(tmp_path: Path) -> None:
    gpus, note = probe_module.collect_gpus_smi(os.fspath(tmp_path / "absent"))
    assert (gpus, note) == ([], "no NVML bindings and no nvidia-smi")


def test_smi_reading_scale_is_exact() -> None:
    scaled: list[Any] = [probe_module._smi_scaled(c, 1000) for c in ("0.1", "299.9995", "N/A")]
    assert scaled == [100, 300000, None]
