"""Supervisors: how component processes live on a host (``direct``, ``systemd``).

Both build commands and run them through a connector, so local and SSH hosts
behave the same (DESIGN.md §7).
"""

from __future__ import annotations

from adapters.supervisors.base import (
    ProcessSpec,
    ProcessState,
    Supervisor,
    SupervisorError,
)
from adapters.supervisors.direct import DirectSupervisor
from adapters.supervisors.envfile import parse_env_file, render_env_file
from adapters.supervisors.systemd import SystemdSupervisor, render_unit

__all__ = [
    "DirectSupervisor",
    "ProcessSpec",
    "ProcessState",
    "Supervisor",
    "SupervisorError",
    "SystemdSupervisor",
    "parse_env_file",
    "render_env_file",
    "render_unit",
]
