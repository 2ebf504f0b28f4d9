"""``chassis status`` and ``chassis history``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table
from chassis.errors import ChassisError
from chassis.views import histories, status_rows


@click.command("status", epilog="Example: chassis status shop --env dev --json")
@click.argument("app_name", metavar="[APP]", required=False)
@click.option("--env", "environment", help="Only this environment.")
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON.")
@pass_app
def status_command(app: App, app_name: str | None, environment: str | None, as_json: bool) -> None:
    """What runs where: host, component, release, revision, state, health, since."""
    rows = status_rows(app.ledger(), app_name, environment)
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
            r.since,
        ]
        for r in rows
    ]
    app.emit(
        [r.to_dict() for r in rows],
        as_json=as_json,
        human=lambda: (
            table(
                table_rows,
                ["ENV", "HOST", "COMPONENT", "RELEASE", "ID", "REV", "STATE", "HEALTH", "SINCE"],
            )
            if table_rows
            else click.echo("nothing deployed yet")
        ),
    )


@click.command("history", epilog="Example: chassis history shop --env dev")
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print history as JSON.")
@pass_app
def history_command(app: App, app_name: str, environment: str, as_json: bool) -> None:
    """Every revision (time, operation, release, status, description) and the
    last successful one."""
    found = histories(app.ledger(), app_name, environment)
    if not found:
        raise ChassisError(f"no installation of {app_name} in {environment}")
    data = found[0]
    rows = [
        [
            str(r["revision"]),
            r["started"],
            r["operation"],
            r["label"],
            r["status"],
            r["description"],
        ]
        for r in data["revisions"]
    ]

    def human() -> None:
        table(rows, ["REV", "TIME", "OPERATION", "RELEASE", "STATUS", "DESCRIPTION"])
        click.echo(f"last successful revision: {data['last_successful'] or 'none'}")

    app.emit(data, as_json=as_json, human=human)
