"""How a host is shown."""

from __future__ import annotations

from typing import Any

import msgspec

from adapters.facts.model import HostFacts
from ledger.hosts import Host
from projections.hosts import host_document


def host_data(host: Host) -> dict[str, Any]:
    return host_document(host)


def where(host: Host) -> str:
    s = host.settings
    if s.connector == "ssh":
        return f"ssh {s.user}@{s.address}:{s.port}"
    return "local"


def summary(host: Host) -> str:
    return describe_facts(host.facts or {})


def summary_of(facts: HostFacts | None) -> str:
    return describe_facts(msgspec.to_builtins(facts) if facts else {})


def describe_facts(facts: dict[str, Any]) -> str:
    if not facts:
        return "not inventoried"
    gib = int(facts.get("memory_total_bytes", 0)) / 2**30
    gpus = facts.get("gpus") or []
    gpu_text = (
        f"{len(gpus)} GPU(s)" if gpus else f"no GPU ({facts.get('gpu_note') or 'none found'})"
    )
    return (
        f"{facts.get('cpu_logical', '?')} cores, {gib:.1f} GiB RAM, {gpu_text}, "
        f"{facts.get('os', '?')}"
    )
