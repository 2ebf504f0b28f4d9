"""Health checks: probes (``http``, ``tcp``, ``command``) and the gate around them.

Probes return :class:`ProbeResult` (ints and strings only); :class:`HealthGate`
decides pass/fail from consecutive passes within a window (DESIGN.md §6);
:class:`ProcessWatch` makes sure the answer came from the process we started.
"""

from __future__ import annotations

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
