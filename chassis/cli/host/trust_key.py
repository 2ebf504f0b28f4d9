"""``chassis host trust-key``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from adapters.errors import ConnectorError
from chassis.cli.app import App, pass_app
from chassis.hosts import all_hosts, environment_hosts, get_host, sync_declared

if TYPE_CHECKING:  # chassis.connect is SSH (fabric, paramiko): imported when the command runs
    from chassis.connect import HostKeyOffer

REFUSED_EXIT = 11
"""Any host not pinned (declined, key changed, unreachable): the host stays
unusable until its key is trusted, like an unknown host key (exit 11)."""


@click.command(
    "trust-key",
    epilog="""\b
A host has one pinned key, whatever its type: a different key, or a key of
another type, is refused (both fingerprints shown) until --replace. Compare
the fingerprint with the host's own before accepting, e.g.
  ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub
Exit status: 0 every host pinned (or already), 11 some host not pinned
(declined at the prompt, key changed without --replace, unreachable); the
others are still processed.

\b
Examples:
  chassis host trust-key prod-1
  chassis host trust-key prod-1 prod-2 --yes
  chassis host trust-key --all --env prod --yes --json
  chassis host trust-key prod-1 --replace      # the host was reinstalled""",
)
@click.argument("names", nargs=-1)
@click.option(
    "--all",
    "all_flag",
    is_flag=True,
    help="Every SSH host (of --env ENV when given) instead of NAMEs.",
)
@click.option(
    "--env",
    "environment",
    metavar="ENV",
    help="With --all: only the hosts of this environment.",
)
@click.option("--yes", is_flag=True, help="Pin without asking (scripts; check fingerprints first).")
@click.option(
    "--replace",
    is_flag=True,
    help="Replace a different pinned key or key type (the host was reinstalled).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds to reach each host.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print results as JSON: an object for one NAME, a list otherwise.",
)
@pass_app
def trust_key_command(
    app: App,
    names: tuple[str, ...],
    all_flag: bool,
    environment: str | None,
    yes: bool,
    replace: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Fetch the SSH host key of each host NAME and pin it in .chassis/known_hosts.

    The pin is also recorded in the ledger, signed by the acting key, for every
    workspace on the same ledger.
    """
    from chassis.connect import HostKeyPinError, pin_host

    if all_flag == bool(names):
        raise click.UsageError("name one or more hosts, or pass --all")
    if environment is not None and not all_flag:
        raise click.UsageError("--env selects hosts for --all; drop it or pass --all")
    ledger = app.ledger(signing=True)
    stack = app.stack()
    if all_flag:
        sync_declared(ledger, stack)
        chosen = (
            all_hosts(ledger) if environment is None else environment_hosts(ledger, environment)
        )
        hosts = [h for h in chosen if h.settings.connector == "ssh"]
        if not hosts:
            where = f"environment {environment!r}" if environment else "this workspace"
            raise click.UsageError(f"{where} has no ssh hosts")
    else:
        sync_declared(ledger, stack, set(names))
        hosts = [get_host(ledger, name) for name in names]

    def confirm(offer: HostKeyOffer) -> bool:
        if yes:
            return True
        if offer.previous is None:
            question = f"{offer.host} ({offer.where}) offers {offer.key_type} {offer.fingerprint}."
            return click.confirm(f"{question} Trust it?", err=True)
        question = (
            f"{offer.host} ({offer.where}) now offers {offer.key_type} {offer.fingerprint}; "
            f"pinned: {offer.previous}."
        )
        return click.confirm(f"{question} Replace the pin?", err=True)

    results: list[dict[str, str | None]] = []
    failed = False
    for host in hosts:
        try:
            result = pin_host(
                app.workspace,
                host,
                replace=replace,
                confirm=confirm,
                timeout=timeout,
                ledger=ledger,
            )
        except (HostKeyPinError, ConnectorError) as e:
            failed = True
            app.note(f"chassis: error: {e}")
            results.append({"host": host.name, "outcome": "refused", "error": str(e)})
            continue
        if result.outcome == "declined":
            failed = True
            app.note(
                f"chassis: error: host {host.name}: {result.key_type} {result.fingerprint} "
                "declined; nothing pinned"
            )
        results.append(result.to_dict())

    def human() -> None:
        for r in results:
            if r["outcome"] != "refused":
                click.echo(f"{r['host']}: {r['key_type']} {r['fingerprint']} {r['outcome']}")

    app.emit(results[0] if len(names) == 1 else results, as_json=as_json, human=human)
    if failed:
        raise click.exceptions.Exit(REFUSED_EXIT)
