"""Health checks: probes (``http``, ``tcp``, ``command``) and the gate around them.

Probes return :class:`ProbeResult` (ints and strings only); :class:`HealthGate`
decides pass/fail from consecutive passes within a window (DESIGN.md §6);
:class:`ProcessWatch` makes sure the answer came from the process we started.

The names load on first use: reading a stack file checks a health path with
``adapters.health.http_get`` alone, and runs this package first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.health.gate import GateResult, HealthGate, ProcessGone
    from adapters.health.owner import ProcessWatch, port_conflicts
    from adapters.health.probes import (
        CheckType,
        HealthCheck,
        ProbeResult,
        command_probe,
        http_probe,
        probe_for,
        tcp_probe,
    )

_WHERE = {
    "GateResult": "gate",
    "HealthGate": "gate",
    "ProcessGone": "gate",
    "ProcessWatch": "owner",
    "port_conflicts": "owner",
    "CheckType": "probes",
    "HealthCheck": "probes",
    "ProbeResult": "probes",
    "command_probe": "probes",
    "http_probe": "probes",
    "probe_for": "probes",
    "tcp_probe": "probes",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"adapters.health.{module}"), name)


__all__ = [
    "CheckType",
    "GateResult",
    "HealthCheck",
    "HealthGate",
    "ProbeResult",
    "ProcessGone",
    "ProcessWatch",
    "command_probe",
    "http_probe",
    "port_conflicts",
    "probe_for",
    "tcp_probe",
]
