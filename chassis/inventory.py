"""Inventory: probe hosts in parallel, record changed facts as events.

Each host is probed with the same self-contained script: in-process for a
local host, piped to the remote ``python3`` for an SSH host. A host that
cannot be reached is reported with its address and cause, and the others
are still inventoried. Unchanged capacity appends nothing.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError
from adapters.facts.inventory import HostInventory
from adapters.facts.model import FactsError, HostFacts, facts_digest, parse_probe_output
from adapters.facts.probe import collect
from chassis.errors import ChassisError
from chassis.hosts import HostLike, resolve_root
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.hosts import Host

PROBE_TIMEOUT_S = 60.0


class ProbeFailed(ChassisError):
    exit_code = 11


@dataclass(frozen=True)
class InventoryResult:
    host: str
    facts: HostFacts | None
    digest: str | None
    recorded: bool
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "ok": self.error is None,
            "recorded": self.recorded,
            "digest": self.digest,
            "error": self.error,
            "facts": msgspec.to_builtins(self.facts) if self.facts else None,
        }


def probe(
    host: HostLike, ws: Workspace, *, timeout: float | None = None
) -> HostFacts:
    """Facts of one host. Raises ``ConnectorError`` or ``ProbeFailed``.
    ``timeout``: of each connection step (default ``chassis.connect``'s)."""
    roots = ["/", resolve_root(host, ws.root)]
    if host.settings.connector == "local":
        return _parse(host.name, json.dumps(collect(roots)))
    # fabric and paramiko load only when a remote host is probed
    from chassis.connect import DEFAULT_CONNECT_TIMEOUT_S, connector_from_settings, recorded_pin

    timeout = DEFAULT_CONNECT_TIMEOUT_S if timeout is None else timeout
    pin = host.key_pin() if isinstance(host, Host) else recorded_pin(ws, host.name)
    with connector_from_settings(
        host.name, host.settings, ws, connect_timeout=timeout, pin=pin
    ) as connector:
        return probe_remote(host.name, connector, roots)


def probe_remote(
    name: str, connector: Connector, roots: list[str], *, python: str = "python3"
) -> HostFacts:
    command = HostInventory.command(roots, python=python)
    result = connector.run(command.shell(), stdin=command.stdin, timeout=PROBE_TIMEOUT_S)
    if result.exit_code == 127:
        raise ProbeFailed(
            f"host {name}: {python} is not installed there; the inventory probe needs it "
            "(install python3 on the host)"
        )
    if not result.ok:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeFailed(f"host {name}: inventory probe exited {result.exit_code}: {tail}")
    return _parse(name, result.stdout)


def _parse(name: str, text: str) -> HostFacts:
    try:
        return parse_probe_output(text)
    except FactsError as e:
        raise ProbeFailed(f"host {name}: {e}") from None


def inventory(
    ledger: Ledger, ws: Workspace, hosts: list[Host], *, timeout: float | None = None
) -> list[InventoryResult]:
    """Probe ``hosts`` in parallel; record each changed inventory as an event."""
    if ledger.signer is None:
        raise ChassisError("recording an inventory needs a signing key")
    actor = ledger.signer.keyid

    def one(host: Host) -> tuple[Host, HostFacts | None, str | None]:
        try:
            return host, probe(host, ws, timeout=timeout), None
        except (ConnectorError, ProbeFailed) as e:
            return host, None, e.diagnostics()

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        probed = list(pool.map(one, hosts))
    results: list[InventoryResult] = []
    for host, facts, error in probed:
        if facts is None:
            results.append(InventoryResult(host.name, None, None, False, error))
            continue
        digest = facts_digest(facts)
        builtins: dict[str, Any] = msgspec.to_builtins(facts)
        recorded: list[bool] = []

        def record(
            h: Host, f: dict[str, Any] = builtins, d: str = digest, out: list[bool] = recorded
        ) -> None:
            out.append(h.record_facts(f, d, actor=actor))

        ledger.update(Host, host.id, record)
        results.append(InventoryResult(host.name, facts, digest, recorded[-1], None))
    return results
