"""Where each secret version is materialized (``chassis secret leases``).

A version is materialized on a host while some installation's active plan
there references it (``store:NAME@VERSION`` in a component's secrets: the
env file of the active release; the executor's prune leaves env files only
in the active release and the rollback target, see
``chassis.engine.expire`` for those). Its lease ends ``ttl`` after that
version was set. An expired lease is listed as such with what to do:
``chassis reconcile APP --env ENV --repair`` stops the component holding it
and deletes the copies (recorded, ``chassis.engine.expire``), after which
the copy is no longer listed; rotating and redeploying (or, when a newer
version is not expired, redeploying) replaces it. Read from the verified
ledger only: the hosts are not asked.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from chassis.engine.plan import running_secrets
from chassis.models.cache import all_installations
from ledger.application import Ledger
from ledger.canonical import format_timestamp, parse_timestamp
from ledger.installations import Installation
from ledger.secrets import Secret

STORE = "store:"


def store_ref(ref: str) -> tuple[str, int | None] | None:
    """``store:NAME@VERSION`` → (NAME, VERSION); None for another kind of reference."""
    if not ref.startswith(STORE):
        return None
    name, _, version = ref.removeprefix(STORE).partition("@")
    return name, int(version) if version.isdigit() else None


class Secrets:
    """The secret aggregates read so far (each loaded once per command)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._found: dict[str, Secret | None] = {}

    def get(self, name: str) -> Secret | None:
        if name not in self._found:
            self._found[name] = self.ledger.find(Secret, Secret.id_for(name))
        return self._found[name]


def leases(ledger: Ledger, at: datetime) -> list[dict[str, Any]]:
    """One row per (secret version, host, component, variable) in use now."""
    secrets = Secrets(ledger)
    rows: list[dict[str, Any]] = []
    for installation in all_installations(ledger):
        rows += installation_leases(installation, secrets, at)
    return sorted(rows, key=lambda r: (r["secret"], r["version"] or 0, r["host"], r["component"]))


def installation_leases(
    installation: Installation, secrets: Secrets, at: datetime
) -> list[dict[str, Any]]:
    """:func:`leases` of one installation: the components its hosts run."""
    rows: list[dict[str, Any]] = []
    for host, components in sorted(running_secrets(installation).items()):
        running = set(installation.hosts.get(host, {}).get("components", ()))
        for component, refs in sorted(components.items()):
            if component not in running:
                continue
            for env, ref in sorted(refs.items()):
                parsed = store_ref(ref)
                if parsed is None:
                    continue
                name, version = parsed
                lease = version_lease(secrets.get(name), version, at)
                rows.append(
                    {
                        "secret": name,
                        "version": version,
                        "app": installation.app,
                        "environment": installation.environment,
                        "host": host,
                        "component": component,
                        "env": env,
                        **lease,
                        "action": _action(installation, name, lease),
                    }
                )
    return rows


def version_lease(secret: Secret | None, version: int | None, at: datetime) -> dict[str, Any]:
    """``set_at``, ``expires`` (None without a ttl), ``expired`` (at ``at``),
    ``current`` (the secret's newest version, not removed) and ``latest``
    (the newest version number; None once removed) and whether that one
    has expired too (``latest_expired``)."""
    entry = secret.at(version) if secret is not None and version is not None else None
    if secret is None or entry is None:
        return {
            "set_at": None,
            "expires": None,
            "expired": False,
            "current": False,
            "latest": None,
            "latest_expired": False,
        }
    expires = lease_end(entry.set_at, entry.ttl_s)
    latest = None if secret.removed else secret.latest
    latest_expires = lease_end(secret.current.set_at, secret.current.ttl_s)
    return {
        "set_at": entry.set_at,
        "expires": expires,
        "expired": expires is not None and at >= parse_timestamp(expires),
        "current": entry.number == secret.latest and not secret.removed,
        "latest": latest,
        "latest_expired": latest_expires is not None and at >= parse_timestamp(latest_expires),
    }


def lease_end(set_at: str, ttl_s: int | None) -> str | None:
    """When a version set at ``set_at`` with ``ttl_s`` is due (None: never)."""
    if ttl_s is None:
        return None
    return format_timestamp(parse_timestamp(set_at) + timedelta(seconds=ttl_s))


def advice(name: str, lease: dict[str, Any]) -> str:
    """What replaces an expired copy (a :func:`version_lease`): a redeploy
    when a newer version is not expired, else a rotation first."""
    latest = lease["latest"]
    if latest is None:
        return f"secret {name} was removed: drop it from the stack and redeploy"
    if not lease["current"] and not lease["latest_expired"]:
        return f"redeploy to take version {latest}"
    return "rotate and redeploy"


def repair_command(installation: Installation) -> str:
    return f"chassis reconcile {installation.app} --env {installation.environment} --repair"


def _action(installation: Installation, name: str, lease: dict[str, Any]) -> str | None:
    """For an expired row: what to run (None otherwise)."""
    if not lease["expired"]:
        return None
    return f"{advice(name, lease)}, or run '{repair_command(installation)}' to remove it"
