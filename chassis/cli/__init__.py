"""The ``chassis`` command line. Commands are thin: parse, call one service
function, render. Errors become one line on stderr and a documented exit code
(``guides/operations.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from chassis import __version__
from chassis.cli.app import App, scrubbed_output
from chassis.cli.audit import audit_group
from chassis.cli.demo_cmd import demo_command
from chassis.cli.deploy_cmd import deploy_command, plan_command
from chassis.cli.doctor_cmd import doctor_command
from chassis.cli.hardware import hardware_group
from chassis.cli.host import host_group
from chassis.cli.init_cmd import init_command
from chassis.cli.key import key_group
from chassis.cli.lease import lease_group
from chassis.cli.ledger import ledger_group
from chassis.cli.proof import proof_group
from chassis.cli.receipts import receipts_group
from chassis.cli.reconcile_cmd import prune_command, reconcile_command
from chassis.cli.recover_cmd import recover_command
from chassis.cli.release import release_group
from chassis.cli.rollback_cmd import rollback_command
from chassis.cli.stack import stack_group
from chassis.cli.status_cmd import history_command, status_command
from chassis.config.env import EnvVars
from proofs.redaction import scrub_text

VERIFICATION_FAILED = 8
"""The exit code of a record or ledger that does not verify (guides/operations.md)."""


class ChassisGroup(click.Group):
    """Maps typed errors to one stderr line and their exit code, here only."""

    def invoke(self, ctx: click.Context) -> Any:
        # Closed with the context, after the command's own close (LIFO).
        ctx.with_resource(scrubbed_output())
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as e:
            code = getattr(e, "exit_code", None)
            if not isinstance(code, int):
                raise
            if code == VERIFICATION_FAILED and isinstance(ctx.obj, App):
                # The ledger did not verify: sign no checkpoint over it, and
                # say one thing, not that as well.
                ctx.obj.skip_aftermath = True
            diagnostics = getattr(e, "diagnostics", None)
            message = diagnostics() if callable(diagnostics) else str(e)
            click.echo(f"chassis: error: {scrub_text(message)}", err=True)
            raise click.exceptions.Exit(code) from None


@click.group(
    cls=ChassisGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: chassis init ./shop --name shop && cd shop && chassis ledger verify",
)
@click.version_option(__version__, "--version", prog_name="chassis")
@click.option(
    "--workspace",
    "-w",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=EnvVars.WORKSPACE,
    help=f"Workspace directory [env: {EnvVars.WORKSPACE}; default: nearest above the cwd].",
)
@click.option(
    "--key",
    "-k",
    "key_ref",
    envvar=EnvVars.KEY,
    help=f"Acting key name or key id [env: {EnvVars.KEY}; default: the workspace's key].",
)
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None, key_ref: str | None) -> None:
    """Chassis: deployments recorded in a signed, hash-chained ledger."""
    app = App(workspace_path=workspace, key_ref=key_ref)
    ctx.obj = app
    ctx.call_on_close(app.close)


for command in (
    init_command,
    release_group,
    plan_command,
    deploy_command,
    recover_command,
    reconcile_command,
    prune_command,
    rollback_command,
    audit_group,
    proof_group,
    receipts_group,
    status_command,
    history_command,
    lease_group,
    key_group,
    ledger_group,
    stack_group,
    host_group,
    hardware_group,
    doctor_command,
    demo_command,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="chassis")
