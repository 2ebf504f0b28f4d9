"""Where each secret version is materialized (``chassis secret leases``).

A version is materialized on a host while some installation's active plan
there references it (``store:NAME@VERSION`` in a component's secrets: the
env file of the active release; retained releases keep none, see
``chassis.engine.executor`` prune). Its lease ends ``ttl`` after that
version was set; an expired one is listed as such, and should be rotated and
redeployed. Read from the verified ledger only: the hosts are not asked.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from chassis.engine.plan import running_secrets
from chassis.models.cache import all_installations
from ledger.application import Ledger
from ledger.canonical import format_timestamp, parse_timestamp
from ledger.secrets import Secret

STORE = "store:"


def leases(ledger: Ledger, at: datetime) -> list[dict[str, Any]]:
    """One row per (secret version, host, component) in use now."""
    rows: list[dict[str, Any]] = []
    for installation in all_installations(ledger):
        for host, components in sorted(running_secrets(installation).items()):
            for component, refs in sorted(components.items()):
                for env, ref in sorted(refs.items()):
                    if not ref.startswith(STORE):
                        continue
                    name, _, version = ref.removeprefix(STORE).partition("@")
                    rows.append(
                        {
                            "secret": name,
                            "version": int(version) if version.isdigit() else None,
                            "app": installation.app,
                            "environment": installation.environment,
                            "host": host,
                            "component": component,
                            "env": env,
                            **_expiry(ledger, name, version, at),
                        }
                    )
    return sorted(rows, key=lambda r: (r["secret"], r["version"] or 0, r["host"], r["component"]))


def _expiry(ledger: Ledger, name: str, version: str, at: datetime) -> dict[str, Any]:
    secret = ledger.find(Secret, Secret.id_for(name))
    entry = secret.at(int(version)) if secret is not None and version.isdigit() else None
    if entry is None:
        return {"set_at": None, "expires": None, "expired": False, "current": False}
    expires = None
    if entry.ttl_s is not None:
        expires = format_timestamp(parse_timestamp(entry.set_at) + timedelta(seconds=entry.ttl_s))
    assert secret is not None
    return {
        "set_at": entry.set_at,
        "expires": expires,
        "expired": expires is not None and at >= parse_timestamp(expires),
        "current": entry.number == secret.latest and not secret.removed,
    }
