"""``chassis audit …``: reading history back, read-only."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table


@click.group("audit", epilog="Example: chassis audit replay shop --env prod --at 3")
def audit_group() -> None:
    """Replay and inspect recorded history (never writes)."""


@audit_group.command(
    "replay",
    epilog="""\b
--at takes a revision (N or rev:N: the state when that revision's operation
finished), an aggregate version (v:N), or an ISO-8601 time with a zone (the
state after the last event recorded at or before it).
Exit status: 0, 10 no such revision/version/time.
Examples:
  chassis audit replay shop --env prod --at 3
  chassis audit replay shop --env prod --at v:120 --json
  chassis audit replay shop --env prod --at 2026-11-27T10:00:00Z""",
)
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option("--at", "at", required=True, metavar="REV|v:VERSION|TIME")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@pass_app
def replay_command(app: App, app_name: str, environment: str, at: str, as_json: bool) -> None:
    """Print APP in ENV as it was at a point of its history: profile, placement,
    release per host and component, config digests and the state digest."""
    from chassis.engine.operation import load_installation
    from chassis.replay import replay

    ledger = app.ledger()
    data = replay(ledger, load_installation(ledger, app_name, environment), at)

    def human() -> None:
        click.echo(
            f"{data['app']}/{data['environment']} at {data['at']} (version {data['version']}, "
            f"revision {data['revision']}, {data['time']})"
        )
        click.echo(f"  profile: {data['profile'] or '-'}")
        click.echo(f"  state digest: {data['state_digest']}")
        rows = [
            [host, component, label, entry["release_id"][:16], str(entry["revision"])]
            for host, entry in data["hosts"].items()
            for component, label in entry["components"].items()
        ]
        table(rows, ["HOST", "COMPONENT", "RELEASE", "RELEASE ID", "REVISION"])
        for label, release in sorted(data["releases"].items()):
            click.echo(f"  {label}: config digest {release['config_digest']}")

    app.emit(data, as_json=as_json, human=human)
