"""``chassis rollback``: a new revision that restores an earlier one's state."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table, wait_lock_option
from chassis.cli.deploy_cmd import DEPLOY_FAILED


@click.command(
    "rollback",
    epilog="""\b
The target state is the installation replayed to the target revision (from its
release snapshot); only hosts whose release differs are touched, through the
same health-gated steps as a deploy. The rollback is recorded as a new revision
"rollback to REV"; history is never rewritten.
Default target: the newest successful revision before the current one, skipping
failed and rolled-back revisions and any with the current state.
Exit status: 0 rolled back, 7 locked (after --wait-lock: still locked when
the time ran out, or its holder is gone), 9 refused (no earlier successful
revision, --to the current one), 10 no such revision, 3 a bundle is gone from
the store, 16 the rollback failed and the pre-rollback release was restored.
Examples:
  chassis rollback shop --env prod
  chassis rollback shop --env prod --to 3 --dry-run
  chassis rollback shop --env prod --to v1 --json""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--to", "to", metavar="REV|LABEL", help="Target revision number or release label.")
@click.option("--max-parallel", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--dry-run", is_flag=True, help="Print the target and the per-host diff; change nothing."
)
@wait_lock_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
@click.pass_context
def rollback_command(
    ctx: click.Context,
    app: App,
    app_name: str | None,
    environment: str | None,
    to: str | None,
    max_parallel: int,
    dry_run: bool,
    wait_lock: int | None,
    as_json: bool,
) -> None:
    """Roll APP in ENV back to an earlier revision's exact state (releases, config, processes)."""
    app_name, environment = app.target(app_name, environment)
    from chassis.engine.operation import load_installation
    from chassis.engine.rollback import plan_rollback, rollback

    if dry_run:
        ledger = app.ledger()
        installation = load_installation(ledger, app_name, environment)
        plan = plan_rollback(ledger, app.workspace, installation, to)
        data = {"dry_run": True, **plan.to_dict()}

        def human_plan() -> None:
            click.echo(
                f"would roll back {app_name}/{environment} from revision {plan.from_revision} "
                f"to revision {plan.target.revision} ({plan.target.label}; {plan.target.reason})"
            )
            for skip in plan.target.skipped:
                click.echo(
                    f"  skipping revision {skip['revision']} ({skip['label']}): {skip['why']}"
                )
            table(_rows(data["hosts"]), ["HOST", "ACTION", "NOW", "TARGET"])

        app.emit(data, as_json=as_json, human=human_plan)
        return
    ledger = app.ledger(signing=True)
    result = app.when_free(
        ledger,
        app_name,
        environment,
        wait_lock,
        lambda: rollback(
            ledger,
            app.workspace,
            app=app_name,
            environment=environment,
            to=to,
            max_parallel=max_parallel,
            progress=app.note,
        ),
    )
    data = result.to_dict()

    def human() -> None:
        click.echo(f"revision {result.revision}: {result.status}: {result.description}")
        click.echo(
            f"  state digest {result.state_digest[:16]}… "
            + ("equals" if data["restored_exactly"] else "DIFFERS from")
            + f" revision {result.plan.target.revision}'s"
        )
        rows = [
            [h, str(r.get("action", "")), "ok" if r.get("ok") else "FAILED", str(r.get("detail"))]
            for h, r in sorted(result.hosts.items())
        ]
        if rows:
            table(rows, ["HOST", "ACTION", "", "DETAIL"])

    app.emit(data, as_json=as_json, human=human)
    if result.status == "failed":
        ctx.exit(DEPLOY_FAILED)


def _rows(hosts: list[dict[str, object]]) -> list[list[str]]:
    def label(entry: object) -> str:
        return str(entry["label"]) if isinstance(entry, dict) else "-"

    return [
        [str(h["host"]), str(h["action"]), label(h["current"]), label(h["target"])] for h in hosts
    ]
