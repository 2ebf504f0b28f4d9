"""Self-contained host inventory probe: prints one JSON object (HostFacts shape).

This file runs two ways, unchanged:

* imported: ``collect(roots=["/", "/srv/app"])`` returns the facts as a dict;
* shipped verbatim to a remote ``python3 - ROOT...`` on stdin, where ``main()``
  prints the facts as one JSON line. Roots are the command-line arguments.

So it needs only the standard library and Python 3.8: ``psutil`` and ``pynvml``
are used when importable, otherwise ``/proc``, ``os`` and ``nvidia-smi``. It
imports nothing of ours. Every number it emits is an ``int``. The parsers
(``parse_*``) are pure; the readers around them do the I/O.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

NO_NVIDIA_LIBRARY = "NVML library not found (no NVIDIA driver)"
NO_NVIDIA_DRIVER = "NVIDIA driver not loaded"
NO_GPU_TOOLS = "no NVML bindings and no nvidia-smi"
SMI_TIMEOUT_S = 30
SMI_FIELDS = (
    "index,uuid,name,memory.total,memory.free,driver_version,compute_cap,"
    "power.draw,power.limit,temperature.gpu"
)
SMI_QUERY = ("--query-gpu=" + SMI_FIELDS, "--format=csv,noheader,nounits")
MIB = 1024 * 1024


class ProbeError(RuntimeError):
    """A fact the probe needs cannot be read on this host."""


def probe_source() -> str:
    """This file's text: what is shipped to a remote ``python3 -``."""
    return Path(__file__).read_text(encoding="utf-8")


# Run from stdin there is no __file__, and nothing needs the source.
PROBE_SOURCE: str = "" if __name__ == "__main__" else probe_source()


# --- pure parsers -----------------------------------------------------------


def parse_os_release(text: str) -> str | None:
    """``PRETTY_NAME`` from os-release text (shell quoting undone), or ``None``."""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            raw = line[len("PRETTY_NAME=") :]
            try:
                value = " ".join(shlex.split(raw))
            except ValueError:  # unbalanced quotes: take it as written
                value = raw.strip().strip("\"'")
            return value or None
    return None


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from ``/proc/meminfo``.

    Kernels before 3.14 lack ``MemAvailable``; there it is estimated as
    ``MemFree + Buffers + Cached``. Raises ``ProbeError`` without ``MemTotal``.
    """
    kib: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[name.strip()] = int(fields[0])
    if "MemTotal" not in kib:
        raise ProbeError("/proc/meminfo has no MemTotal")
    available = kib.get("MemAvailable")
    if available is None:
        available = sum(kib.get(name, 0) for name in ("MemFree", "Buffers", "Cached"))
    return kib["MemTotal"] * 1024, available * 1024


def parse_cpu_model(text: str) -> str | None:
    """The CPU model from ``/proc/cpuinfo``: "model name" (x86), else "Hardware",
    "Processor", "cpu model" or "cpu" (ARM, MIPS, POWER); ``None`` if none."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and value.strip() and key not in found:
            found[key] = value.strip()
    for name in ("model name", "hardware", "processor", "cpu model", "cpu"):
        model = found.get(name)
        if model is not None and not model.isdigit():  # x86 "processor: 0" is an index
            return model
    return None


def parse_cpuinfo_cores(text: str) -> int | None:
    """Physical cores: distinct (physical id, core id) pairs in ``/proc/cpuinfo``,
    or ``None`` where the file does not carry them."""
    pairs: set[tuple[str, str]] = set()
    for block in re.split(r"\n\s*\n", text):
        ids: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            ids[key.strip().lower()] = value.strip()
        if "core id" in ids:
            pairs.add((ids.get("physical id", "0"), ids["core id"]))
    return len(pairs) or None


def parse_btime(text: str) -> int:
    """Boot time (epoch seconds) from the ``btime`` line of ``/proc/stat``."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "btime":
            return int(fields[1])
    raise ProbeError("/proc/stat has no btime line")


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version integer as text: 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def parse_smi_cuda_version(text: str) -> str | None:
    """The "CUDA Version: 12.4" of the plain ``nvidia-smi`` banner, or ``None``."""
    match = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", text)
    return match.group(1) if match else None


def parse_smi_csv(text: str, cuda_version: str | None = None) -> list[dict[str, Any]]:
    """GPUs from ``nvidia-smi`` with ``SMI_QUERY`` (csv, noheader, nounits).

    MiB become bytes and watts become milliwatts (exact decimal rounding).
    "[N/A]" and similar in an optional reading (power, temperature) become
    ``None``. Raises ``ValueError`` on a line that does not fit the query.
    """
    gpus = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if not row:
            continue
        if len(row) != 10:
            raise ValueError(f"nvidia-smi row has {len(row)} fields, expected 10: {row!r}")
        index, uuid, name, total, free, driver, compute, draw, limit, temperature = (
            cell.strip() for cell in row
        )
        if not re.fullmatch(r"[0-9]+\.[0-9]+", compute):
            raise ValueError(f"compute_cap {compute!r} is not major.minor")
        gpus.append(
            {
                "index": int(index),
                "uuid": uuid,
                "name": name,
                "memory_total_bytes": int(total) * MIB,
                "memory_free_bytes": int(free) * MIB,
                "driver_version": driver,
                "cuda_driver_version": cuda_version,
                "compute_capability": compute,
                "power_draw_mw": _smi_scaled(draw, 1000),
                "power_limit_mw": _smi_scaled(limit, 1000),
                "temperature_c": _smi_scaled(temperature, 1),
            }
        )
    return gpus


def _smi_scaled(cell: str, factor: int) -> int | None:
    try:
        value = Decimal(cell) * factor
    except InvalidOperation:  # "[N/A]", "[Not Supported]", "[Unknown Error]"
        return None
    if not value.is_finite():
        return None
    return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))


# --- GPUs -----------------------------------------------------------------


def collect_gpus(nvml: Any) -> tuple[list[dict[str, Any]], str | None]:
    """GPUs through NVML, given the ``pynvml`` module (or a stand-in).

    Returns (gpus, note). A failing ``nvmlInit`` (no library, driver not
    loaded) gives ``([], reason)``: a fact, not an error. A device whose
    required readings fail is left out and named in the note; power and
    temperature that fail are ``None``. ``nvmlShutdown`` always follows a
    successful ``nvmlInit``.
    """
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        return [], _nvml_init_note(nvml, err)
    try:
        return _nvml_devices(nvml)
    except nvml.NVMLError as err:
        return [], f"NVML query failed: {err}"
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _nvml_init_note(nvml: Any, err: Exception) -> str:
    if isinstance(err, getattr(nvml, "NVMLError_LibraryNotFound", ())):
        return NO_NVIDIA_LIBRARY
    if isinstance(err, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
        return NO_NVIDIA_DRIVER
    return f"NVML init failed: {err}"


def _nvml_devices(nvml: Any) -> tuple[list[dict[str, Any]], str | None]:
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    cuda = _nvml_optional(nvml, nvml.nvmlSystemGetCudaDriverVersion)
    cuda_version = None if cuda is None else cuda_version_text(cuda)
    gpus = []
    problems = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        try:
            gpus.append(_nvml_device(nvml, index, driver, cuda_version))
        except nvml.NVMLError as err:
            problems.append(f"GPU {index}: {err}")
    if problems:
        return gpus, "NVML could not read " + "; ".join(problems)
    return gpus, None if gpus else "NVML reports no GPUs"


def _nvml_device(nvml: Any, index: int, driver: str, cuda: str | None) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    return {
        "index": index,
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "memory_total_bytes": int(memory.total),
        "memory_free_bytes": int(memory.free),
        "driver_version": driver,
        "cuda_driver_version": cuda,
        "compute_capability": f"{int(major)}.{int(minor)}",
        "power_draw_mw": _nvml_optional(nvml, nvml.nvmlDeviceGetPowerUsage, handle),
        "power_limit_mw": _nvml_optional(nvml, nvml.nvmlDeviceGetEnforcedPowerLimit, handle),
        "temperature_c": _nvml_optional(
            nvml, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
        ),
    }


def _nvml_optional(nvml: Any, read: Any, *args: Any) -> int | None:
    try:
        return int(read(*args))
    except nvml.NVMLError:
        return None


def _text(value: Any) -> str:
    """Older pynvml returns bytes where newer returns str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def collect_gpus_smi(smi: str = "nvidia-smi") -> tuple[list[dict[str, Any]], str | None]:
    """GPUs through the ``nvidia-smi`` executable (name or path), for hosts
    without ``pynvml``. Returns (gpus, note) like ``collect_gpus``."""
    if shutil.which(smi) is None:
        return [], NO_GPU_TOOLS
    try:
        query = subprocess.run(
            [smi, *SMI_QUERY], capture_output=True, text=True, timeout=SMI_TIMEOUT_S
        )
        if query.returncode != 0:
            return [], "nvidia-smi failed: " + _first_line(query.stderr, query.stdout)
        banner = subprocess.run([smi], capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
        gpus = parse_smi_csv(query.stdout, parse_smi_cuda_version(banner.stdout))
    except subprocess.TimeoutExpired:
        return [], f"nvidia-smi timed out after {SMI_TIMEOUT_S}s"
    except (OSError, ValueError) as err:
        return [], f"nvidia-smi unusable: {err}"
    return gpus, None if gpus else "nvidia-smi reports no GPUs"


def _first_line(*texts: str) -> str:
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                return line.strip()
    return "no output"


# --- the host ---------------------------------------------------------------


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _os_name() -> str:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = _read(path)
        name = parse_os_release(text) if text is not None else None
        if name:
            return name
    return platform.system()


def _measured_path(root: str) -> Path:
    """``root`` or, where it does not exist yet, its nearest existing parent."""
    path = Path(root).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def _disk(root: str, psutil: Any) -> dict[str, Any]:
    where = _measured_path(root)
    if psutil is not None:
        usage = psutil.disk_usage(str(where))
        total, free = int(usage.total), int(usage.free)
    else:  # the same arithmetic as psutil
        st = os.statvfs(where)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return {"path": root, "total_bytes": total, "free_bytes": free}


def _physical_cores(cpuinfo: str, logical: int) -> int:
    """Distinct core sibling sets in sysfs (as psutil counts them), else
    ``/proc/cpuinfo`` pairs, else the logical count."""
    cpus = Path("/sys/devices/system/cpu")
    for name in ("core_cpus_list", "thread_siblings_list"):
        files = cpus.glob(f"cpu[0-9]*/topology/{name}")
        sets = {path.read_text(encoding="utf-8").strip() for path in files}
        if sets:
            return len(sets)
    return parse_cpuinfo_cores(cpuinfo) or logical


def _system(psutil: Any, cpuinfo: str) -> dict[str, Any]:
    if psutil is not None:
        memory = psutil.virtual_memory()
        logical = int(psutil.cpu_count(logical=True) or os.cpu_count() or 1)
        physical = psutil.cpu_count(logical=False) or _physical_cores(cpuinfo, logical)
        return {
            "cpu_logical": logical,
            "cpu_physical": int(physical),
            "memory_total_bytes": int(memory.total),
            "memory_available_bytes": int(memory.available),
            "boot_time": int(psutil.boot_time()),
        }
    meminfo, stat = _read("/proc/meminfo"), _read("/proc/stat")
    if meminfo is None or stat is None:
        raise ProbeError("neither psutil nor /proc is available")
    total, available = parse_meminfo(meminfo)
    logical = os.cpu_count() or 1
    return {
        "cpu_logical": logical,
        "cpu_physical": _physical_cores(cpuinfo, logical),
        "memory_total_bytes": total,
        "memory_available_bytes": available,
        "boot_time": parse_btime(stat),
    }


def collect(
    roots: Iterable[str] = ("/",),
    use_psutil: bool = True,
    use_pynvml: bool = True,
    nvidia_smi: str | None = "nvidia-smi",
) -> dict[str, Any]:
    """Read this host's facts; returns a dict in the ``HostFacts`` shape.

    ``roots`` are the paths whose filesystems to size (duplicates dropped).
    ``use_psutil``/``use_pynvml`` False skip those modules even where
    importable; ``nvidia_smi`` names the fallback executable (None: none).
    Raises ``ProbeError`` where a required fact cannot be read.
    """
    roots = [roots] if isinstance(roots, str) else list(roots)
    psutil = _optional_module("psutil") if use_psutil else None
    nvml = _optional_module("pynvml") if use_pynvml else None
    sources = ["psutil" if psutil is not None else "proc"]
    if nvml is not None:
        sources.append("pynvml")
        gpus, gpu_note = collect_gpus(nvml)
    elif nvidia_smi is not None and shutil.which(nvidia_smi) is not None:
        sources.append("nvidia-smi")
        gpus, gpu_note = collect_gpus_smi(nvidia_smi)
    else:
        gpus, gpu_note = [], NO_GPU_TOOLS
    cpuinfo = _read("/proc/cpuinfo") or ""
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu_model": parse_cpu_model(cpuinfo) or platform.processor() or platform.machine(),
        "disks": [_disk(root, psutil) for root in dict.fromkeys(roots)],
        "python_version": platform.python_version(),
        "gpus": gpus,
        "gpu_note": gpu_note,
        "sources": sources,
    }
    facts.update(_system(psutil, cpuinfo))
    return facts


def main(argv: list[str] | None = None) -> int:
    """Print the facts for the roots in ``argv`` (default ``sys.argv[1:]``, else
    "/") as one JSON line. Returns 0, or 1 with the reason on stderr."""
    roots = sys.argv[1:] if argv is None else argv
    try:
        facts = collect(roots or ["/"])
    except (ProbeError, OSError) as err:
        sys.stderr.write(f"chassis probe: {err}\n")
        return 1
    sys.stdout.write(json.dumps(facts, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
