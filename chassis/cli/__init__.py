"""The ``chassis`` command line. Commands are thin: parse, call one service
function, render. Errors become one line on stderr and a documented exit code
(``guides/operations.md``); a Python traceback, and what libraries log, only
with ``--debug``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from adapters.errors import one_line
from chassis import __version__
from chassis.cli.app import App, scrubbed_output
from chassis.cli.audit import audit_group
from chassis.cli.demo_cmd import demo_command
from chassis.cli.deploy_cmd import deploy_command, plan_command, redeploy_command
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

INTERNAL_ERROR = 1
VERIFICATION_FAILED = 8
"""The exit code of a record or ledger that does not verify (guides/operations.md)."""
INTERRUPTED = 130
DEBUG_ENV = "CHASSIS_DEBUG"

# paramiko logs a failed handshake (with its traceback) from its own thread;
# with no handler Python prints that to stderr, once per host. Not without --debug.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class ChassisGroup(click.Group):
    """Maps errors to one stderr line and their exit code, here only: typed
    errors to theirs, anything else (a bug) to 1; the traceback with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        # Closed with the context, after the command's own close (LIFO).
        ctx.with_resource(scrubbed_output())
        if debug:
            ctx.with_resource(_library_logs())
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except click.exceptions.Abort:
            raise
        except KeyboardInterrupt:
            if debug:
                _print_traceback()
            click.echo("chassis: error: interrupted", err=True)
            raise click.exceptions.Exit(INTERRUPTED) from None
        except Exception as e:
            code = getattr(e, "exit_code", None)
            if debug:
                _print_traceback()
            if not isinstance(code, int):
                hint = "" if debug else "; run it again with --debug for the traceback"
                message = (
                    f"internal error: {type(e).__name__}: {_message(e)} "
                    f"(a bug: please report it{hint})"
                )
                code = INTERNAL_ERROR
            else:
                message = _message(e)
            if code == VERIFICATION_FAILED and isinstance(ctx.obj, App):
                # The ledger did not verify: sign no checkpoint over it, and
                # say one thing, not that as well.
                ctx.obj.skip_aftermath = True
            click.echo(f"chassis: error: {scrub_text(message)}", err=True)
            raise click.exceptions.Exit(code) from None


def _message(e: BaseException) -> str:
    """The error's one line: its diagnostics, or its message where those run
    on (a log tail); collapsed to one line whatever a library said."""
    diagnostics = getattr(e, "diagnostics", None)
    message = str(diagnostics() if callable(diagnostics) else e).strip()
    if "\n" in message:
        short = str(e).strip()
        message = short if short and "\n" not in short else message
    return one_line(message, limit=2000) or type(e).__name__


def _print_traceback() -> None:
    click.echo(scrub_text(traceback.format_exc()).rstrip("\n"), err=True)


class _StderrHandler(logging.Handler):
    """Library log records to whatever ``sys.stderr`` is when they come."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(scrub_text(self.format(record)) + "\n")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _library_logs() -> Iterator[None]:
    """For one ``--debug`` command: what libraries log (paramiko's handshakes
    included), INFO and up, on stderr."""
    handler = _StderrHandler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(min(saved, logging.INFO) if saved else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


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
@click.option(
    "--debug",
    is_flag=True,
    envvar=DEBUG_ENV,
    help="On an error, print the Python traceback too, and what libraries log (e.g. SSH) "
    f"[env: {DEBUG_ENV}=1].",
)
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None, key_ref: str | None, debug: bool) -> None:
    """Chassis: deployments recorded in a signed, hash-chained ledger."""
    app = App(workspace_path=workspace, key_ref=key_ref)
    ctx.obj = app
    ctx.call_on_close(app.close)


for command in (
    init_command,
    release_group,
    plan_command,
    deploy_command,
    redeploy_command,
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
