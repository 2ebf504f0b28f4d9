"""Host inventory facts as validated values, their parser and their digest.

The probe (``adapters/facts/probe.py``) prints one JSON object; this module is the
boundary where that text becomes a ``HostFacts`` or a ``FactsError``. Every number
is an ``int`` in a named unit (bytes, milliwatts, degrees C, epoch seconds): floats
have no canonical encoding in the ledger, so the types reject them.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec

__all__ = [
    "DIGEST_DOMAIN",
    "VOLATILE_DISK_FIELDS",
    "VOLATILE_GPU_FIELDS",
    "VOLATILE_HOST_FIELDS",
    "DiskFacts",
    "FactsError",
    "GpuFacts",
    "HostFacts",
    "capacity_view",
    "facts_digest",
    "parse_probe_output",
]

Count = Annotated[int, msgspec.Meta(ge=0)]
Version = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+\.[0-9]+$")]

DIGEST_DOMAIN = b"chassis.host.facts.v1\x00"

# Readings that move while capacity stays the same; `capacity_view` leaves them out.
VOLATILE_HOST_FIELDS = frozenset({"memory_available_bytes"})
VOLATILE_DISK_FIELDS = frozenset({"free_bytes"})
VOLATILE_GPU_FIELDS = frozenset({"memory_free_bytes", "power_draw_mw", "temperature_c"})


class FactsError(ValueError):
    """Probe output that is not a valid ``HostFacts``; the message is one line."""


class GpuFacts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One GPU as NVML (or ``nvidia-smi``) reports it.

    ``cuda_driver_version`` is the newest CUDA version the driver supports
    ("12.4"), ``None`` where the source does not say. ``compute_capability`` is
    "major.minor" ("8.0"). Power is in milliwatts and temperature in degrees C;
    each is ``None`` where the device does not report it.
    """

    index: Count
    uuid: str
    name: str
    memory_total_bytes: Count
    memory_free_bytes: Count
    driver_version: str
    cuda_driver_version: Version | None
    compute_capability: Version
    power_draw_mw: Count | None
    power_limit_mw: Count | None
    temperature_c: int | None


class DiskFacts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Size of the filesystem holding ``path``.

    ``path`` is the path that was asked for. Where it does not exist yet (a host
    root before the first deploy), the figures are those of its nearest existing
    parent, which is the filesystem the path will be created on.
    ``free_bytes`` is what an unprivileged user may still write.
    """

    path: str
    total_bytes: Count
    free_bytes: Count


class HostFacts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What ``chassis host inventory`` found on one host.

    ``os`` is ``PRETTY_NAME`` from os-release, else ``platform.system()``.
    ``gpus`` is empty where the host has no usable NVIDIA driver; ``gpu_note``
    then says why (a fact, not an error). ``sources`` names the collectors
    used: ``psutil`` or ``proc`` for the system, ``pynvml`` or ``nvidia-smi``
    for GPUs.
    """

    hostname: str
    os: str
    kernel: str
    arch: str
    cpu_model: str
    cpu_logical: Annotated[int, msgspec.Meta(ge=1)]
    cpu_physical: Annotated[int, msgspec.Meta(ge=1)]
    memory_total_bytes: Count
    memory_available_bytes: Count
    disks: list[DiskFacts]
    boot_time: Count
    python_version: str
    gpus: list[GpuFacts]
    gpu_note: str | None
    sources: list[str]


def parse_probe_output(text: str | bytes) -> HostFacts:
    """Decode the probe's stdout into ``HostFacts``.

    Returns the facts. Raises ``FactsError`` for malformed JSON, a missing,
    mistyped (floats included) or unknown field; the message names the field
    by its JSON path, e.g. ``$.gpus[0].power_draw_mw``.
    """
    try:
        return msgspec.json.decode(text, type=HostFacts)
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        raise FactsError(f"invalid host facts: {first_line}") from e


def capacity_view(facts: HostFacts) -> dict[str, Any]:
    """The stable part of ``facts``: everything but the volatile readings.

    Left out: ``memory_available_bytes``, each disk's ``free_bytes`` and each
    GPU's ``memory_free_bytes``, ``power_draw_mw`` and ``temperature_c``. These
    move between any two probes of an unchanged host; keeping them would make
    every probe a change and append a fact each time, whereas the ledger appends
    only when capacity (what placement relies on) changes. Disks are ordered by
    path and GPUs by index, so the order roots were asked in does not matter.
    Returns plain builtins, ready for canonical encoding.
    """
    view: dict[str, Any] = msgspec.to_builtins(facts)
    for name in VOLATILE_HOST_FIELDS:
        del view[name]
    view["disks"] = sorted(
        (_without(disk, VOLATILE_DISK_FIELDS) for disk in view["disks"]),
        key=lambda disk: disk["path"],
    )
    view["gpus"] = sorted(
        (_without(gpu, VOLATILE_GPU_FIELDS) for gpu in view["gpus"]),
        key=lambda gpu: gpu["index"],
    )
    return view


def facts_digest(facts: HostFacts) -> str:
    """Hex SHA-256 of ``DIGEST_DOMAIN`` + the sorted-key JSON of ``capacity_view``.

    Equal digests mean equal capacity, so recording can skip the append.
    """
    body = msgspec.json.encode(capacity_view(facts), order="sorted")
    return hashlib.sha256(DIGEST_DOMAIN + body).hexdigest()


def _without(item: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key not in names}
