"""``chassis plan`` and ``chassis deploy`` (also ``chassis stack deploy``)."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table
from chassis.engine.deploy import DeployOptions, deploy, prepare
from chassis.errors import ChassisError

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
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option("--profile", required=True)
@click.option("--release", "label", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@pass_app
def plan_command(
    app: App, app_name: str, environment: str, profile: str, label: str, as_json: bool
) -> None:
    """Compile the deployment plan and print it with its digest; changes nothing."""
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

    def human() -> None:
        click.echo(
            f"plan {data['digest'][:16]}: {app_name} {label} ({plan.release_id[:16]}) "
            f"-> {environment}, profile {profile}"
        )
        table(_plan_rows(data), ["HOST", "GROUPS", "COMPONENTS", "ROOT"])
        click.echo("steps per host: " + " -> ".join(plan.hosts[0].steps if plan.hosts else []))

    app.emit(data, as_json=as_json, human=human)


@click.command(
    "deploy",
    epilog="""\b
Exit status: 0 deployed (or no change), 16 failed and restored, 7 locked,
11 a host unreachable or its key unknown before anything started (nothing
recorded), 3 a value a host step would refuse, 10 unknown app.
Examples:
  chassis deploy shop --env dev --profile ternary-split-3 --release v1
  chassis deploy shop --env prod --profile monolith --release v2 --max-parallel 2 --dry-run""",
)
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option("--profile", required=True)
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
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@pass_app
@click.pass_context
def deploy_command(
    ctx: click.Context,
    app: App,
    app_name: str,
    environment: str,
    profile: str,
    label: str,
    max_parallel: int,
    max_failures: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Deploy RELEASE of APP to ENV: upload, verify on the host, unpack, configure,
    start, health-gate, swap; restore the previous release if it fails."""
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
    result = deploy(
        app.ledger(signing=True),
        app.workspace,
        app.stack(),
        app=app_name,
        environment=environment,
        profile=profile,
        label=label,
        options=DeployOptions(max_parallel=max_parallel, max_failures=max_failures),
        progress=app.note,
    )
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
            table(rows, ["HOST", "RESULT", "", "DETAIL"])

    app.emit(result.to_dict(), as_json=as_json, human=human)
    if result.status == "failed":
        raise DeployFailed(f"revision {result.revision}: {result.description}")
