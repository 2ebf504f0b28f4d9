"""``chassis reconcile`` (do the hosts match the ledger?) and ``chassis prune``."""

from __future__ import annotations

from datetime import datetime

import click

from chassis.cli.app import App, at_option, pass_app, table, wait_lock_option
from chassis.engine.executor import KEEP_RELEASES  # prune's default, in its --help


@click.command(
    "reconcile",
    epilog="""\b
Compares every host of the installation with what the ledger records there:
where 'current' points, the release directory and its marker, whether each
component's process runs that release, and each health check (one pass
within 1.5 s). Drift is recorded (one drift-observed event per host) and
shown by 'chassis status'. --repair runs a 'repair' operation that puts the
recorded release back (re-uploaded from the bundle store if needed, health
gated), then checks again.
Secret leases: every copy of a store secret version whose lease (its ttl)
has expired is listed, one line per host and component: the running
component's env file, and retained releases' env files that may hold it.
--repair first removes them, as a recorded 'expire-lease' operation: the
component is stopped (no longer placed there) and its env files deleted; a
redeploy puts it back, on a newer version. --at TIME judges expiry as of
TIME instead of now (with --repair, copies expiring before TIME go too).
Exit status: 0 every host matches and no copy of an expired secret remains
(after --repair: now), 7 an operation holds the lease (after --wait-lock:
still, when the time ran out, or its holder is gone), 10 no such
installation, 11 a host could not be checked (wins over 18), 18 drift
found or expired secret copies remain (each listed).
Examples:
  chassis reconcile shop --env dev
  chassis reconcile shop --env prod --json
  chassis reconcile shop --env prod --repair
  chassis reconcile shop --env prod --at 2030-01-31T00:00:00Z""",
)
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option(
    "--repair",
    is_flag=True,
    help="Remove expired secret copies, then restore the recorded release on drifted hosts.",
)
@at_option
@wait_lock_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def reconcile_command(
    app: App,
    app_name: str,
    environment: str,
    repair: bool,
    at: datetime | None,
    wait_lock: int | None,
    as_json: bool,
) -> None:
    """Check that the hosts of APP in ENV run what the ledger says; record any drift."""
    from chassis.engine.reconcile import DriftFound, HostsUnchecked, reconcile

    ledger = app.ledger(signing=True)
    result = app.when_free(
        ledger,
        app_name,
        environment,
        wait_lock,
        lambda: reconcile(
            ledger,
            app.workspace,
            app=app_name,
            environment=environment,
            repair=repair,
            progress=app.note,
            at=at,
        ),
    )

    def human() -> None:
        for host, outcome in sorted(result.expired_removed.items()):
            click.echo(
                f"{host}: expire-lease {'ok' if outcome['ok'] else 'FAILED'}: {outcome['detail']}"
            )
        for host, outcome in sorted(result.repaired.items()):
            click.echo(f"{host}: repair {'ok' if outcome['ok'] else 'FAILED'}: {outcome['detail']}")
        for line in result.lines():
            click.echo(line)
        checked = len(result.checks) - len(result.unreachable)
        if not result.drift and not result.unreachable and not result.expired:
            click.echo(f"{app_name}/{environment}: {checked} host(s) match the ledger")
        for host in result.stale:
            click.echo(f"{host}: drift recorded earlier is gone (recorded as clean)")

    app.emit(result.to_dict(), as_json=as_json, human=human)
    unchecked = sorted({*result.unreachable, *result.expired_unchecked})
    if unchecked:
        raise HostsUnchecked(f"{app_name}/{environment}: could not check {', '.join(unchecked)}")
    hint = "" if repair else f"; 'chassis reconcile {app_name} --env {environment} --repair'"
    if result.drift:
        hosts = ", ".join(result.drift)
        raise DriftFound(f"{app_name}/{environment}: drift on {hosts}{hint}")
    if result.expired:
        hosts = ", ".join(sorted({c.host for c in result.expired}))
        raise DriftFound(
            f"{app_name}/{environment}: copies of expired secret versions on {hosts}{hint}"
        )


@click.command(
    "prune",
    epilog=f"""\b
Removes old release directories (releases/<id> and releases/<id>.tar.gz) on
every host of the installation, keeping the newest N by revision order and,
whatever N is (0 included), the release active on the host, the last
successful release, the default rollback target and any release a process
still runs. Entries the ledger never knew are left alone and listed.
Records nothing; refused while an operation holds the lease.
Exit status: 0 pruned (or nothing to prune), 7 an operation holds the lease,
10 no such installation, 11 a host could not be reached (others are pruned).
Examples:
  chassis prune shop --env dev --dry-run
  chassis prune shop --env prod --keep 1 --json
Default --keep: {KEEP_RELEASES}.""",
)
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=KEEP_RELEASES,
    show_default=True,
    help="Newest releases to keep per host besides the protected ones.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def prune_command(
    app: App, app_name: str, environment: str, keep: int, dry_run: bool, as_json: bool
) -> None:
    """Remove old release directories of APP in ENV from its hosts."""
    from chassis.engine.prune import prune
    from chassis.engine.reconcile import HostsUnchecked

    result = prune(
        app.ledger(),
        app.workspace,
        app=app_name,
        environment=environment,
        keep=keep,
        dry_run=dry_run,
        progress=app.note,
    )
    removed = "would remove" if dry_run else "removed"
    rows: list[list[str]] = []
    for host, outcome in result.hosts.items():
        rows += [[host, removed, r["label"], r["dir"], ""] for r in outcome["removed"]]
        rows += [
            [host, "kept", r["label"], r["dir"], "; ".join(r["reasons"])] for r in outcome["kept"]
        ]
        rows += [
            [host, "unknown", "-", d, "not a release the ledger knows"] for d in outcome["unknown"]
        ]
        if outcome["error"]:
            rows.append([host, "error", "-", "-", outcome["error"]])

    def human() -> None:
        if rows:
            table(rows, ["HOST", "ACTION", "RELEASE", "DIR", "WHY"])
        else:
            click.echo(f"{app_name}/{environment}: nothing deployed, nothing to prune")

    app.emit(result.to_dict(), as_json=as_json, human=human)
    if result.unreachable:
        hosts = ", ".join(result.unreachable)
        raise HostsUnchecked(f"{app_name}/{environment}: could not prune {hosts}")
