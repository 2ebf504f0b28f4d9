"""``chassis recover``: finish or undo an operation whose process died."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table


@click.command(
    "recover",
    epilog="""\b
Probes every host of the interrupted operation, then completes it (the new
release runs, healthy, everywhere) or restores the previous release on every
host. Everything it finds and does is recorded. An evolution run whose
process died ('chassis evolution proof') has its trial slots swept from its
hosts and is finished as aborted (a run still running here is left alone).
A lease that is still being renewed belongs to a working operation: recover
refuses it, whichever key holds it, and says what runs where (key, host, pid,
last renewal). On the holder's machine it checks the pid: a dead holder is
taken over at once, a live one never. A holder on another machine stops
renewing when it dies: its lease expires one ttl (120 s) after its last
renewal, or pass --force once you know it is gone.
Exit status: 0 recovered (or nothing to recover), 7 the lease is live
(held by a running operation, or by another key: see --force), 17 a host
could not be restored (the lease stays held; run recover again once it is
fixed), 4 the ledger became unreachable (run recover again once it is back).
Examples:
  chassis recover shop --env dev
  chassis recover shop --env prod --json""",
)
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option(
    "--force",
    is_flag=True,
    help="Take over a live lease whose holder this machine cannot check (its process "
    "must be gone); a holder running here is never taken over.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def recover_command(app: App, app_name: str, environment: str, force: bool, as_json: bool) -> None:
    """Recover APP in ENV after a crashed deploy: complete it or restore the previous release."""
    from chassis.engine.recover import RecoveryIncomplete, recover
    from chassis.evolution.recover import recover_runs

    runs = recover_runs(
        app.ledger(signing=True),
        app.workspace,
        app=app_name,
        environment=environment,
        force=force,
        progress=app.note,
    )
    result = recover(
        app.ledger(signing=True),
        app.workspace,
        app=app_name,
        environment=environment,
        force=force,
        progress=app.note,
    )
    rows = [
        [host, r["action"], "ok" if r["ok"] else "FAILED", r["detail"]]
        for host, r in sorted(result.hosts.items())
    ]

    def human() -> None:
        if result.revision is None:
            click.echo(result.description)
            return
        click.echo(f"revision {result.revision}: {result.outcome}: {result.description}")
        if rows:
            table(rows, ["HOST", "ACTION", "", "DETAIL"])

    app.emit({**result.to_dict(), "evolution_runs": runs}, as_json=as_json, human=human)
    if result.outcome == "incomplete":
        raise RecoveryIncomplete(result.description)
