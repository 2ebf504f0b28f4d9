"""``chassis lease …``: operations in progress, and breaking stale ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from chassis.cli.app import App, pass_app, table
from chassis.views import histories
from ledger.canonical import format_timestamp, parse_timestamp
from ledger.installations import Installation


@click.group(
    "lease", epilog="Example: chassis lease break shop --env dev --reason 'deploy host crashed'"
)
def lease_group() -> None:
    """Leases: one operation at a time per app and environment."""


@lease_group.command("list", epilog="Example: chassis lease list --json")
@click.option("--json", "as_json", is_flag=True, help="Print leases as JSON.")
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """Operations in progress (or crashed) that hold a lease: who holds it, the
    host and pid of its process, when it was last renewed and when it expires
    (a working holder renews it every ttl/3; a crashed one stops renewing)."""
    now = datetime.now(UTC)
    data = []
    for history in histories(app.ledger()):
        lease = history["lease"]
        if lease is None:
            continue
        last = lease.get("renewed") or lease["started"]
        expires = parse_timestamp(last) + timedelta(seconds=int(lease["ttl_s"]))
        data.append(
            {
                "app": history["app"],
                "environment": history["environment"],
                **lease,
                "expires": format_timestamp(expires),
                "expired": now > expires,
            }
        )
    rows = [
        [
            d["app"],
            d["environment"],
            d["operation"],
            str(d["revision"]),
            d["holder"][:16],
            f"{d['hostname']}:{d['pid']}" if "pid" in d else "?",
            d["started"],
            d.get("renewed") or "-",
            d["expires"] or "",
            "expired" if d["expired"] else "live",
        ]
        for d in data
    ]
    headers = ["APP", "ENV", "OPERATION", "REV", "HOLDER", "WHERE", "STARTED", "RENEWED"]
    app.emit(
        data,
        as_json=as_json,
        human=lambda: (
            table(rows, [*headers, "EXPIRES", "STATE"]) if rows else click.echo("no leases held")
        ),
    )


@lease_group.command(
    "break",
    epilog="""\b
Only an expired lease can be broken, unless --force: a working operation
renews its lease every ttl/3, so an expired lease means its process stopped
(crashed, killed, or cut off from the ledger). Breaking is recorded and
marks the operation failed without touching hosts: prefer 'chassis recover',
which completes or restores the operation; break a lease only when the hosts
are known to be fine (or will be fixed by the next deploy).
Example:
  chassis lease break shop --env dev --reason 'runner died' --force""",
)
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option("--reason", required=True, help="Why; recorded in the ledger.")
@click.option("--force", is_flag=True, help="Break a lease that has not expired.")
@pass_app
def break_command(app: App, app_name: str, environment: str, reason: str, force: bool) -> None:
    """Break the lease of APP in ENV."""
    from chassis.engine.operation import load_installation

    ledger = app.ledger(signing=True)
    assert ledger.signer is not None
    actor = ledger.signer.keyid
    key = load_installation(ledger, app_name, environment).id
    broken: list[dict[str, object]] = []
    ledger.update(
        Installation,
        key,
        lambda i: broken.append(
            i.break_lease(actor=actor, reason=reason, force=force, now=datetime.now(UTC))
        ),
        retry=False,
    )
    click.echo(f"broke the lease of {broken[-1]['operation']} revision {broken[-1]['revision']}")
