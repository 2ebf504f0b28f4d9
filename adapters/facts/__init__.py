"""Host inventory facts (DESIGN.md §6 placement, §7 adapters).

``probe.py`` is a self-contained script that reads a host (in-process, or shipped
to a remote ``python3 -``); ``model.py`` validates its output into ``HostFacts``
and digests the stable part; ``inventory.py`` pairs the command with the parser;
``gpu.py`` types the NVML and ``nvidia-smi`` readers.
"""

from __future__ import annotations

from adapters.facts.gpu import Nvml, parse_nvidia_smi, parse_nvidia_smi_cuda_version, read_gpus
from adapters.facts.inventory import HostInventory, ProbeCommand
from adapters.facts.model import (
    DiskFacts,
    FactsError,
    GpuFacts,
    HostFacts,
    capacity_view,
    facts_digest,
    parse_probe_output,
)
from adapters.facts.probe import PROBE_SOURCE, ProbeError, collect, probe_source

__all__ = [
    "PROBE_SOURCE",
    "DiskFacts",
    "FactsError",
    "GpuFacts",
    "HostFacts",
    "HostInventory",
    "Nvml",
    "ProbeCommand",
    "ProbeError",
    "capacity_view",
    "collect",
    "facts_digest",
    "parse_nvidia_smi",
    "parse_nvidia_smi_cuda_version",
    "parse_probe_output",
    "probe_source",
    "read_gpus",
]
