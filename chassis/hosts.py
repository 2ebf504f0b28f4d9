"""The host registry: hosts declared in ``chassis.toml`` or added by hand,
all recorded as events on ``Host`` aggregates.

Declared hosts are registered (or reconfigured) on first use; a host added
with ``chassis host add`` must not clash with a declared one, since the file
would silently win on the next command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from adapters.connectors.base import ADDRESS, ADDRESS_RULE, name_problem
from chassis.errors import ChassisError, NotFound
from chassis.stack.schema import HostSpec
from chassis.stack.spec import Stack
from ledger.application import Ledger
from ledger.errors import NotFoundError
from ledger.hosts import Host, HostSettings

REGISTERED_TOPIC = Host.Registered.TOPIC


class HostError(ChassisError):
    exit_code = 9


class HostInputError(HostError):
    """A host name, environment name, label key or address outside its rule
    (``adapters.connectors.base``): refused before anything is recorded."""

    exit_code = 3


class UnknownHost(HostError, NotFound):
    """No host of that name is registered or declared: "not found" (exit 10),
    whichever command named it (``host show``, ``host remove``, ``host
    inventory``, ``host trust-key``, ``hardware validate --host``). Still a
    ``HostError`` for callers that catch those."""

    exit_code = 10


def check_host_input(name: str, settings: HostSettings) -> None:
    """Names are data (DESIGN.md §1 principle 10): the same rules as the stack file."""
    for kind, value in (("host", name), ("environment", settings.environment)):
        problem = name_problem(kind, value)
        if problem is not None:
            raise HostInputError(problem)
    for label in settings.labels:
        problem = name_problem("label", label)
        if problem is not None:
            raise HostInputError(f"host {name}: {problem}")
    if settings.address is not None and not ADDRESS.match(settings.address):
        raise HostInputError(f"host {name}: address {settings.address!r}: expected {ADDRESS_RULE}")


def settings_from_spec(environment: str, spec: HostSpec) -> HostSettings:
    return HostSettings(
        environment=environment,
        connector=spec.connector,
        root=spec.root,
        address=spec.address,
        port=spec.port,
        user=spec.user,
        key_file=spec.key,
        supervisor=spec.supervisor,
        labels=dict(spec.labels),
    )


def _actor(ledger: Ledger) -> str:
    if ledger.signer is None:
        raise HostError("recording hosts needs a signing key")
    return ledger.signer.keyid


def sync_declared(ledger: Ledger, stack: Stack, names: set[str] | None = None) -> list[str]:
    """Register or reconfigure hosts declared in the stack file; return those changed."""
    changed: list[str] = []
    for environment, spec in stack.hosts():
        if names is not None and spec.name not in names:
            continue
        settings = settings_from_spec(environment, spec)
        existing = ledger.find(Host, Host.id_for(spec.name))
        if existing is None:
            ledger.append(Host.register(spec.name, settings, actor=_actor(ledger)))
            changed.append(spec.name)
        elif existing.settings != settings or existing.removed:

            def reconfigure(host: Host, new: HostSettings = settings) -> None:
                host.reconfigure(new, actor=_actor(ledger))

            ledger.update(Host, existing.id, reconfigure)
            changed.append(spec.name)
    return changed


def add_host(ledger: Ledger, stack: Stack | None, name: str, settings: HostSettings) -> Host:
    check_host_input(name, settings)
    if stack is not None and any(spec.name == name for _, spec in stack.hosts()):
        raise HostError(f"host {name!r} is declared in {stack.path}; change it there")
    existing = ledger.find(Host, Host.id_for(name))
    if existing is None:
        host = Host.register(name, settings, actor=_actor(ledger))
        ledger.append(host)
        return host
    if not existing.removed:
        raise HostError(f"host {name!r} already exists (remove it first, or edit it)")
    return ledger.update(Host, existing.id, lambda h: h.reconfigure(settings, actor=_actor(ledger)))


def remove_host(ledger: Ledger, stack: Stack | None, name: str, reason: str) -> Host:
    if stack is not None and any(spec.name == name for _, spec in stack.hosts()):
        raise HostError(f"host {name!r} is declared in {stack.path}; remove it from the file first")
    host = get_host(ledger, name)
    return ledger.update(Host, host.id, lambda h: h.remove(reason, actor=_actor(ledger)))


def get_host(ledger: Ledger, name: str) -> Host:
    try:
        return ledger.load(Host, Host.id_for(name))
    except NotFoundError:
        raise UnknownHost(f"no host named {name!r} (see 'chassis host list')") from None


def all_hosts(ledger: Ledger, *, include_removed: bool = False) -> list[Host]:
    """Every registered host, in registration order."""
    hosts: list[Host] = []
    seen: set[str] = set()
    for row in ledger.recorder.select_notifications(
        start=None, limit=1_000_000, topics=[REGISTERED_TOPIC]
    ):
        key = str(row.originator_id)
        if key in seen:
            continue
        seen.add(key)
        host = ledger.find(Host, UUID(key))
        if host is not None and (include_removed or not host.removed):
            hosts.append(host)
    return hosts


def environment_hosts(ledger: Ledger, environment: str) -> list[Host]:
    return [h for h in all_hosts(ledger) if h.settings.environment == environment]


@dataclass(frozen=True)
class HostView:
    """A host as placement sees it, whether or not the ledger knows it yet."""

    name: str
    settings: HostSettings
    facts: dict[str, Any] | None


HostLike = Host | HostView


def declared_views(ledger: Ledger, stack: Stack, environment: str) -> list[HostView]:
    """The environment's hosts without writing anything: registered ones, with
    the stack file's settings (and declared but unregistered ones) on top."""
    views = {
        h.name: HostView(h.name, h.settings, h.facts)
        for h in environment_hosts(ledger, environment)
    }
    for env, spec in stack.hosts():
        if env != environment:
            continue
        known = ledger.find(Host, Host.id_for(spec.name))
        facts = known.facts if known is not None and not known.removed else None
        views[spec.name] = HostView(spec.name, settings_from_spec(env, spec), facts)
    return [views[name] for name in sorted(views)]


def resolve_root(host: HostLike, workspace_root: Path) -> str:
    """Where a host's root is: local roots may be relative to the workspace."""
    root = host.settings.root
    if host.settings.connector == "local" and not root.startswith("/"):
        return str((workspace_root / root).resolve())
    return root
