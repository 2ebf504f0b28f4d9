"""``chassis logs``: what the components wrote, from every host they run on."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app


@click.command(
    "logs",
    epilog="""\b
Reads logs/<component>.log on each host the ledger records the component
active on (local or SSH, direct or systemd), through the host's connector.
Read-only: nothing is recorded. -f keeps reading new lines (every second)
until Ctrl-C. Each line is prefixed with HOST/COMPONENT.
Exit status: 0; 10 nothing deployed, or no such host or component there;
11 a host could not be reached.
Examples:
  chassis logs shop --env prod
  chassis logs shop --env prod --component api -n 200
  chassis logs shop --env prod --host prod-2 -f
  chassis logs shop --env prod --json""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--host", default=None, help="Only this host.")
@click.option("--component", default=None, help="Only this component.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print {host, component, lines} objects.")
@pass_app
def logs_command(
    app: App,
    app_name: str | None,
    environment: str | None,
    host: str | None,
    component: str | None,
    lines: int,
    follow: bool,
    as_json: bool,
) -> None:
    """Print the last lines each component of APP in ENV wrote (-f: and follow)."""
    app_name, environment = app.target(app_name, environment)
    import json

    from chassis import logs

    found = logs.sources(
        app.ledger(),
        app.workspace,
        app=app_name,
        environment=environment,
        host=host,
        component=component,
    )
    try:
        rows = [
            {"host": s.host, "component": s.component, "path": s.path, "lines": text}
            for s, text in logs.read(found, lines)
        ]
        if as_json and not follow:
            click.echo(json.dumps(rows, indent=2))
            return
        width = max(len(f"{s.host}/{s.component}") for s in found)

        def emit(source: logs.LogSource, line: str) -> None:
            if as_json:
                record = {"host": source.host, "component": source.component, "line": line}
                click.echo(json.dumps(record))
            else:
                click.echo(f"{source.host + '/' + source.component:<{width}} | {line}")

        for source, text in zip(found, (r["lines"] for r in rows), strict=True):
            for line in text:
                emit(source, line)
        if follow:
            # On stderr, so stdout holds log lines only; from here on every new line shows.
            click.echo(f"following {len(found)} log(s); Ctrl-C to stop", err=True)
            try:
                logs.follow(found, emit)
            except KeyboardInterrupt:
                return
    finally:
        logs.close(found)
