"""``chassis status`` (what runs where, as last observed; ``--live`` looks
now) and ``chassis history``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from chassis.cli.app import App, pass_app, table
from chassis.errors import ChassisError, NotFound
from chassis.views import StatusRow, histories, status_rows
from ledger.canonical import format_timestamp
from ledger.errors import NotFoundError
from projections.installations import component_status

if TYPE_CHECKING:
    from chassis.engine.reconcile import HostCheck


HEADERS = [
    *("ENV", "HOST", "COMPONENT", "RELEASE", "ID", "REV"),
    *("STATE", "HEALTH", "RESTARTS", "OBSERVED"),
]


@click.command(
    "status",
    epilog="""\b
Shows what was last OBSERVED of each component and how long ago, never an
assumed "running": an activation (its health gate passed), 'status --live'
and 'reconcile' observe; a restore does not, so a restored host reads
"unknown" until something looks again. STATE: running, down, restarting
(the direct supervisor waits to restart it after a crash), wrong-release,
drifted (seen differing from the ledger), unknown, unreachable (--live).
RESTARTS: crash restarts of the running instance (direct supervisor; '-'
where not counted).
--live probes every host now, in parallel, changing nothing there
(reconcile's look, without repairing), prints what it saw and records one
state-observed event per host where that differs from the ledger's last
record (nothing when nothing changed; nothing while an operation holds the
lease). It needs a signing key.
Exit status: 0; with --live also 10 no such installation, 11 a host could
not be checked (wins over 18), 18 what was seen differs from the ledger
(a component down or unhealthy, current or the release directory wrong).
Examples:
  chassis status
  chassis status shop --env dev --json
  chassis status shop --env prod --live
  chassis status --live --json | jq '.[] | select(.healthy != true)'""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option("--env", "environment", help="Only this environment.")
@click.option(
    "--live",
    is_flag=True,
    help="Probe the hosts now (read-only), record what changed, show what was seen.",
)
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON.")
@pass_app
def status_command(
    app: App, app_name: str | None, environment: str | None, live: bool, as_json: bool
) -> None:
    """What runs where, as last observed: host, component, release, revision,
    state, health, restarts, and when it was observed."""
    if live:
        rows, failure = _live_rows(app, app_name, environment)
    else:
        rows, failure = status_rows(app.ledger(), app_name, environment), None
    table_rows = [
        [
            r.environment,
            r.host,
            r.component,
            r.label,
            r.release_id[:12],
            str(r.revision),
            r.state,
            r.health,
            "-" if r.restarts is None else str(r.restarts),
            r.observed_text(),
        ]
        for r in rows
    ]

    def human() -> None:
        if not table_rows:
            click.echo("nothing deployed yet")
            return
        table(table_rows, HEADERS)
        for r in rows:  # why a component is not plainly healthy, one line each
            if r.healthy is False and r.detail:
                click.echo(f"{r.environment}/{r.host}/{r.component}: {r.detail}")

    app.emit([r.to_dict() for r in rows], as_json=as_json, human=human)
    if failure is not None:
        raise failure


def _live_rows(
    app: App, app_name: str | None, environment: str | None
) -> tuple[list[StatusRow], ChassisError | None]:
    """Look now (:func:`chassis.engine.reconcile.observe_live`), then the rows
    as the view holds them with what was just seen in place of the record,
    and the error to exit with (11 unreachable, 18 differs from the ledger)."""
    from chassis.engine.operation import load_installation
    from chassis.engine.reconcile import DriftFound, HostsUnchecked, observe_live

    ledger = app.ledger(signing=True)
    found = histories(ledger, app_name, environment)
    if app_name is not None and not found:
        where = f" in {environment}" if environment else ""
        raise NotFoundError(f"no installation of {app_name}{where} (it has never been deployed)")
    installations = [load_installation(ledger, h["app"], h["environment"]) for h in found]
    results = observe_live(ledger, app.workspace, installations, app.note)
    now = datetime.now(UTC)
    checks = {(r.app, r.environment, h): c for r in results for h, c in r.checks.items()}
    rows = []
    for row in status_rows(ledger, app_name, environment, now):
        check = checks.get((row.app, row.environment, row.host))
        if check is not None:
            row = _seen_now(row, check, now)
        rows.append(row)
    unreachable = [f"{r.app}/{r.environment} {h}" for r in results for h in r.unreachable]
    drifted = [f"{r.app}/{r.environment} {h}" for r in results for h in r.drift]
    if unreachable:
        return rows, HostsUnchecked(f"could not check {', '.join(unreachable)}")
    if drifted:
        first = next(r for r in results if r.drift)
        hint = (
            f"; 'chassis reconcile {first.app} --env {first.environment} --repair' "
            "puts the recorded release back"
        )
        return rows, DriftFound(f"live state differs from the ledger on {', '.join(drifted)}{hint}")
    return rows, None


def _seen_now(row: StatusRow, check: HostCheck, now: datetime) -> StatusRow:
    """``row`` with what ``check`` just saw (read as the view would read it recorded)."""
    if check.error is not None:
        return replace(
            row,
            state="unreachable",
            health="unknown",
            healthy=None,
            observed=None,
            observed_by=None,
            observed_age_s=None,
            restarts=None,
            detail=check.error.splitlines()[0],
        )
    at = format_timestamp(now)
    seen = {"at": at, "since": at, "by": "status --live", "components": check.seen}
    drift = {"observed": at, "differences": check.differences} if check.differences else None
    fresh = component_status(seen, drift, row.component, row.since)
    fresh["observed_by"] = "status --live"  # the drift it saw is this look's, not reconcile's
    return replace(row, observed_age_s=0, **fresh)


@click.command(
    "history",
    epilog="""\b
BY is the name of the key that signed each revision's intent (its key id in
--json as "actor", for revisions recorded since it was kept).
Examples:
  chassis history shop --env dev
  chassis history --json          # [defaults] env, the workspace's app""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--json", "as_json", is_flag=True, help="Print history as JSON.")
@pass_app
def history_command(app: App, app_name: str | None, environment: str | None, as_json: bool) -> None:
    """Every revision (time, operation, release, status, who, description) and
    the last successful one."""
    app_name, environment = app.target(app_name, environment)
    ledger = app.ledger()
    found = histories(ledger, app_name, environment)
    if not found:
        raise NotFound(f"no installation of {app_name} in {environment}")
    data = found[0]
    trust = ledger.trust()
    names = {k: v.name for k, v in trust.keys.items()} if trust is not None else {}
    rows = [
        [
            str(r["revision"]),
            r["started"],
            r["operation"],
            r["label"],
            r["status"],
            names.get(str(r.get("actor")), str(r.get("actor") or "-")[:16]),
            r["description"],
        ]
        for r in data["revisions"]
    ]

    def human() -> None:
        table(rows, ["REV", "TIME", "OPERATION", "RELEASE", "STATUS", "BY", "DESCRIPTION"])
        click.echo(f"last successful revision: {data['last_successful'] or 'none'}")

    app.emit(data, as_json=as_json, human=human)
