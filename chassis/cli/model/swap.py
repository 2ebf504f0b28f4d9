"""``chassis model swap``: one component onto another model, health-gated."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, wait_lock_option


@click.command(
    "swap",
    epilog="""\b
A deploy of the installation's active release (the release and profile of
its last successful revision) in which COMPONENT's CHASSIS_MODEL_DIR names
MODEL's newest manifest on its host: recorded in the plan, run through the
pre-flight (the model must be complete on the host before anything stops:
'chassis model materialize' first), the lease and the health gate, every
host restored to what it ran if it fails. 'chassis rollback' undoes it like
any revision. Swaps recorded earlier for other components are kept. The next
plain 'chassis deploy' uses the stack file's 'model' again, for every
component, unless the file is changed (set model = "MODEL" there to keep it).
Exit status: 0 swapped (or already on that model); 16 failed and restored;
10 unknown app, installation, component or model, or the model is not on a
host; 7 locked; 11 a host unreachable.
Examples:
  chassis model swap shop --env prod --component api --model tiny-v2
  chassis model swap --component api --model tiny --reason 'back to the small one' --json""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--component", required=True, metavar="NAME", help="The component to point.")
@click.option("--model", "model", required=True, metavar="NAME", help="The model it gets.")
@click.option("--max-parallel", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--reason", "--message", "reason", metavar="TEXT", help="Recorded with the revision.")
@wait_lock_option
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@pass_app
def swap_command(
    app: App,
    app_name: str | None,
    environment: str | None,
    component: str,
    model: str,
    max_parallel: int,
    reason: str | None,
    wait_lock: int | None,
    as_json: bool,
) -> None:
    """Point a component at another model through the health gate; restored on failure."""
    app_name, environment = app.target(app_name, environment)
    from chassis.cli.deploy_cmd import _report
    from chassis.engine.deploy import DeployOptions
    from chassis.models.swap import swap

    ledger = app.ledger(signing=True)
    result = app.when_free(
        ledger,
        app_name,
        environment,
        wait_lock,
        lambda: swap(
            ledger,
            app.workspace,
            app.stack(),
            app=app_name,
            environment=environment,
            component=component,
            model=model,
            options=DeployOptions(max_parallel=max_parallel, reason=reason),
            progress=app.note,
        ),
    )
    _report(app, result, as_json)
