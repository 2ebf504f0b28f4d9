"""``chassis restart`` and ``chassis remove``: day-one operations, recorded."""

from __future__ import annotations

import sys

import click

from chassis.cli.app import App, pass_app, table, wait_lock_option
from chassis.errors import ChassisError

OPERATION_FAILED = 16


class OperationFailed(ChassisError):
    """The operation failed; what it had changed was restored (exit 16)."""

    exit_code = OPERATION_FAILED


@click.command(
    "restart",
    epilog="""\b
Stops, starts and health-gates components where the ledger records them, as
a recorded operation ('restart', one per revision the hosts are on). A host
whose restarted component fails its gate gets its release started again
(restored as a failed deploy restores) and the restart exits 16.
Exit status: 0 restarted and healthy; 16 failed (and restored); 7 locked;
10 nothing deployed, or no such host/component there.
Examples:
  chassis restart shop --env prod
  chassis restart shop --env prod --component api --reason 'stuck worker pool'
  chassis restart shop --env prod --host prod-2 --json""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--host", default=None, help="Only this host.")
@click.option("--component", default=None, help="Only this component.")
@click.option("--reason", "--message", "reason", metavar="TEXT", help="Recorded with it.")
@wait_lock_option
@click.option("--json", "as_json", is_flag=True, help="Print host outcomes as JSON.")
@pass_app
def restart_command(
    app: App,
    app_name: str | None,
    environment: str | None,
    host: str | None,
    component: str | None,
    reason: str | None,
    wait_lock: int | None,
    as_json: bool,
) -> None:
    """Restart the components of APP in ENV through the health gate."""
    from chassis.engine.restart import restart

    app_name, environment = app.target(app_name, environment)
    ledger = app.ledger(signing=True)
    outcomes = app.when_free(
        ledger,
        app_name,
        environment,
        wait_lock,
        lambda: restart(
            ledger,
            app.workspace,
            app=app_name,
            environment=environment,
            host=host,
            component=component,
            reason=reason,
            progress=app.note,
        ),
    )

    def human() -> None:
        rows = [
            [h, "ok" if o["ok"] else "failed", o["detail"]] for h, o in sorted(outcomes.items())
        ]
        table(rows, ["HOST", "RESULT", "DETAIL"])

    app.emit(outcomes, as_json=as_json, human=human)
    failed = sorted(h for h, o in outcomes.items() if not o["ok"])
    if failed:
        raise OperationFailed(
            "restart failed on " + "; ".join(f"{h}: {outcomes[h]['detail']}" for h in failed)
        )


@click.command(
    "remove",
    epilog="""\b
Retires APP from ENV on every host, as a recorded operation ('remove'): each
host gets a 'retire' step before anything stops and a host-retired record
after (components stopped, current unlinked). Release directories stay on
the hosts: 'chassis rollback' brings the installation back. A host that
cannot be retired puts every host back (exit 16). Asks for confirmation on
a terminal; --yes is required otherwise.
Exit status: 0 removed; 16 failed (and restored); 7 locked; 10 nothing
deployed; 2 not confirmed.
Examples:
  chassis remove shop --env staging --reason 'env retired' --yes""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--reason", required=True, metavar="TEXT", help="Why (recorded).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@wait_lock_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_app
def remove_command(
    app: App,
    app_name: str | None,
    environment: str | None,
    reason: str,
    yes: bool,
    wait_lock: int | None,
    as_json: bool,
) -> None:
    """Stop APP in ENV everywhere and record it removed."""
    app_name, environment = app.target(app_name, environment)
    from chassis.engine.remove import remove

    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("remove stops every host of the installation: pass --yes")
        click.confirm(f"stop {app_name} on every host of {environment}?", abort=True, err=True)
    ledger = app.ledger(signing=True)
    result = app.when_free(
        ledger,
        app_name,
        environment,
        wait_lock,
        lambda: remove(
            ledger,
            app.workspace,
            app=app_name,
            environment=environment,
            reason=reason,
            progress=app.note,
        ),
    )

    def human() -> None:
        click.echo(f"revision {result.revision}: {result.status}: {result.description}")

    app.emit(result.to_dict(), as_json=as_json, human=human)
    if result.status == "failed":
        raise OperationFailed(f"revision {result.revision}: {result.description}")
