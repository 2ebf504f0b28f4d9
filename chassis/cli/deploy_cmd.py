"""``chassis plan`` and ``chassis deploy`` (also ``chassis stack deploy``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from chassis.cli.app import App, outcome_colour, pass_app, table, wait_lock_option
from chassis.errors import ChassisError

if TYPE_CHECKING:  # the engine is imported when a command runs, not for --help
    from chassis.engine.deploy import DeployResult
    from chassis.engine.plan import Plan

DEPLOY_FAILED = 16


class DeployFailed(ChassisError):
    """The deploy failed and the previous release was restored (its summary is printed)."""

    exit_code = DEPLOY_FAILED


def _plan_rows(plan_dict: dict[str, object]) -> list[list[str]]:
    rows = []
    for host in plan_dict["hosts"]:  # type: ignore[attr-defined]
        rows.append(
            [
                host["host"],
                ",".join(host["groups"]),
                ",".join(c["name"] for c in host["components"]),
                host["root"],
            ]
        )
    return rows


@click.command(
    "plan",
    epilog="""\b
Example:
  chassis plan shop --env dev --profile ternary-split-3 --release v1 --json""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option(
    "--profile", default=None, help="Default: the environment's profile, then [defaults] profile."
)
@click.option("--release", "label", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@pass_app
def plan_command(
    app: App,
    app_name: str | None,
    environment: str | None,
    profile: str | None,
    label: str,
    as_json: bool,
) -> None:
    """Compile the deployment plan and print it with its digest; changes nothing."""
    app_name, environment = app.target(app_name, environment)
    profile = profile or app.stack().default_profile(environment)
    from chassis.engine.deploy import prepare

    plan, _ = prepare(
        app.ledger(),
        app.workspace,
        app.stack(),
        app=app_name,
        environment=environment,
        profile=profile,
        label=label,
        progress=app.note,
        record=False,
    )
    data = plan.to_dict()
    _note_secret_changes(app, app_name, environment, plan)

    def human() -> None:
        click.echo(
            f"plan {data['digest'][:16]}: {app_name} {label} ({plan.release_id[:16]}) "
            f"-> {environment}, profile {profile}"
        )
        table(_plan_rows(data), ["HOST", "GROUPS", "COMPONENTS", "ROOT"])
        click.echo("steps per host: " + " -> ".join(plan.hosts[0].steps if plan.hosts else []))

    app.emit(data, as_json=as_json, human=human)


def _note_secret_changes(app: App, app_name: str, environment: str, plan: Plan) -> None:
    """Say which secrets would reach the hosts with new values (stderr, so
    ``--json`` stays the plan): what a rotation changes, before it runs."""
    from chassis.engine.deploy import secret_changes
    from chassis.engine.lifecycle import befores
    from ledger.installations import Installation

    key = Installation.id_for(Installation.key(app_name, environment))
    installation = app.ledger().find(Installation, key)
    if installation is None:
        return
    changed, unknown = secret_changes(plan, befores(installation))
    if changed:
        app.note(f"secrets with new values since what runs now: {', '.join(changed)}")
    if unknown:
        app.note(f"secrets that cannot be compared with what runs now: {', '.join(unknown)}")


@click.command(
    "deploy",
    epilog="""\b
Exit status: 0 deployed (or no change), 16 failed and restored, 7 locked
(after --wait-lock: still locked when the time ran out, or its holder is gone),
11 a host unreachable or its key unknown before anything started (nothing
recorded), 3 a value a host step would refuse, 10 unknown app.
Examples:
  chassis deploy shop --env dev --profile ternary-split-3 --release v1
  chassis deploy shop --env prod --profile monolith --release v2 --max-parallel 2 --dry-run""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option(
    "--profile", default=None, help="Default: the environment's profile, then [defaults] profile."
)
@click.option("--release", "label", required=True)
@click.option("--max-parallel", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--max-failures",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Hosts allowed to fail (and be restored) before the whole deploy is restored.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option(
    "--force",
    is_flag=True,
    help="Deploy even if the release is already active everywhere: env references are "
    "resolved anew and every component restarts through the health gate.",
)
@click.option(
    "--reason",
    "--message",
    "reason",
    metavar="TEXT",
    help="Why: recorded in the revision's description (shown by history).",
)
@wait_lock_option
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@pass_app
@click.pass_context
def deploy_command(
    ctx: click.Context,
    app: App,
    app_name: str | None,
    environment: str | None,
    profile: str | None,
    label: str,
    max_parallel: int,
    max_failures: int,
    dry_run: bool,
    force: bool,
    reason: str | None,
    wait_lock: int | None,
    as_json: bool,
) -> None:
    """Deploy RELEASE of APP to ENV: upload, verify on the host, unpack, configure,
    start, health-gate, swap; restore the previous release if it fails."""
    app_name, environment = app.target(app_name, environment)
    profile = profile or app.stack().default_profile(environment)
    if dry_run:
        ctx.invoke(
            plan_command,
            app_name=app_name,
            environment=environment,
            profile=profile,
            label=label,
            as_json=as_json,
        )
        return
    from chassis.engine.deploy import DeployOptions, deploy

    ledger = app.ledger(signing=True)
    result = app.when_free(
        ledger,
        app_name,
        environment,
        wait_lock,
        lambda: deploy(
            ledger,
            app.workspace,
            app.stack(),
            app=app_name,
            environment=environment,
            profile=profile,
            label=label,
            options=DeployOptions(
                max_parallel=max_parallel, max_failures=max_failures, force=force, reason=reason
            ),
            progress=app.note,
        ),
    )
    _report(app, result, as_json)


def _report(app: App, result: DeployResult, as_json: bool) -> None:
    """The deploy's summary; exit 16 when it failed (and was restored). Its
    RESULT and restored columns are coloured on a terminal; each failed host
    is one row (its step and detail), never a traceback."""
    rows = [
        [
            h,
            "ok" if r["ok"] else f"failed at {r['step']}",
            "restored" if r["restored"] else "",
            r["detail"],
        ]
        for h, r in sorted(result.hosts.items())
    ]

    def human() -> None:
        click.echo(f"revision {result.revision}: {result.status}: {result.description}")
        if rows:
            table(
                rows,
                ["HOST", "RESULT", "", "DETAIL"],
                colours={1: outcome_colour, 2: outcome_colour},
            )

    app.emit(result.to_dict(), as_json=as_json, human=human)
    if result.status == "failed":
        raise DeployFailed(f"revision {result.revision}: {result.description}")


@click.command(
    "redeploy",
    epilog="""\b
Deploys the release and profile of the last successful revision again, as a
new revision: env references (from_env, from_file) are resolved anew, so a
rotated secret reaches the hosts, and every component restarts through the
health gate (restored on failure). The revision records which secrets
changed, by keyed fingerprint, never their values.
Exit status: as deploy (0, 16 failed and restored, 7 locked, 10 nothing
deployed yet).
Examples:
  chassis redeploy shop --env prod --reason 'rotated DB_PASSWORD'
  chassis deploy shop --env prod --profile monolith --release v2 --force   # same, explicit""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--max-parallel", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--reason", "--message", "reason", metavar="TEXT", help="Recorded with the revision.")
@wait_lock_option
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@pass_app
def redeploy_command(
    app: App,
    app_name: str | None,
    environment: str | None,
    max_parallel: int,
    reason: str | None,
    wait_lock: int | None,
    as_json: bool,
) -> None:
    """Restart APP in ENV on its current release, re-reading env references."""
    app_name, environment = app.target(app_name, environment)
    from chassis.engine.deploy import DeployOptions, redeploy

    ledger = app.ledger(signing=True)
    result = app.when_free(
        ledger,
        app_name,
        environment,
        wait_lock,
        lambda: redeploy(
            ledger,
            app.workspace,
            app.stack(),
            app=app_name,
            environment=environment,
            options=DeployOptions(max_parallel=max_parallel, reason=reason),
            progress=app.note,
        ),
    )
    _report(app, result, as_json)
