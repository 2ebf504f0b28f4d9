"""Registered hosts with their latest facts and admission results."""

from __future__ import annotations

from typing import Any

import msgspec

from ledger.hosts import Host
from projections.fold import FoldedView


def host_document(host: Host) -> dict[str, Any]:
    settings: dict[str, Any] = msgspec.to_builtins(host.settings)
    return {
        "name": host.name,
        **settings,
        "removed": host.removed,
        "removed_reason": host.removed_reason,
        "facts_digest": host.facts_digest,
        "inventoried_at": host.inventoried_at,
        "facts": host.facts,
        "admissions": host.admissions,
    }


HOSTS = FoldedView(
    name="hosts", aggregate=Host, topic_prefix="chassis.host.", document=host_document
)
