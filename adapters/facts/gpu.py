"""Typed GPU facts over the probe's NVML and ``nvidia-smi`` readers.

The collection logic lives once, in ``probe.py``, because a remote host receives
only that file. This module gives it types: the ``Nvml`` protocol says which part
of ``pynvml`` (nvidia-ml-py) the probe uses, so a test stand-in is checked
against it, and results come back as ``GpuFacts``.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from adapters.facts import probe
from adapters.facts.model import FactsError, GpuFacts

__all__ = ["Nvml", "parse_nvidia_smi", "parse_nvidia_smi_cuda_version", "read_gpus"]


class Nvml(Protocol):
    """The ``pynvml`` functions, constant and exception classes the probe calls."""

    @property
    def NVMLError(self) -> type[Exception]: ...
    @property
    def NVMLError_LibraryNotFound(self) -> type[Exception]: ...
    @property
    def NVMLError_DriverNotLoaded(self) -> type[Exception]: ...
    @property
    def NVML_TEMPERATURE_GPU(self) -> int: ...

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...
    def nvmlSystemGetCudaDriverVersion(self) -> int: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int: ...


def read_gpus(nvml: Nvml) -> tuple[list[GpuFacts], str | None]:
    """GPUs through ``nvml`` (the ``pynvml`` module or a stand-in).

    Returns (gpus, note); the note says why the list is empty or short (no
    library, driver not loaded, a device that failed). Raises ``FactsError``
    if NVML returns values that do not fit ``GpuFacts``.
    """
    gpus, note = probe.collect_gpus(nvml)
    return _typed(gpus), note


def parse_nvidia_smi(csv_text: str, cuda_version: str | None = None) -> list[GpuFacts]:
    """GPUs from ``nvidia-smi`` output for ``probe.SMI_QUERY``.

    ``cuda_version`` comes from the banner (``parse_nvidia_smi_cuda_version``).
    Raises ``FactsError`` on output that does not fit the query.
    """
    try:
        gpus = probe.parse_smi_csv(csv_text, cuda_version)
    except ValueError as e:
        raise FactsError(f"invalid nvidia-smi output: {e}") from e
    return _typed(gpus)


def parse_nvidia_smi_cuda_version(banner: str) -> str | None:
    """The "CUDA Version: 12.4" of the plain ``nvidia-smi`` banner, or ``None``."""
    return probe.parse_smi_cuda_version(banner)


def _typed(gpus: list[dict[str, Any]]) -> list[GpuFacts]:
    try:
        return msgspec.convert(gpus, list[GpuFacts])
    except msgspec.ValidationError as e:
        raise FactsError(f"invalid GPU facts: {e}") from e
