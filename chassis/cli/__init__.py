"""The ``chassis`` command line. Commands are thin: parse, call one service
function, render. Errors become one line on stderr and a documented exit code
(``guides/operations.md``); a Python traceback, and what libraries log, only
with ``--debug``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from adapters.errors import one_line
from chassis import __version__
from chassis.cli.app import App, scrubbed_output
from chassis.cli.lazy import Lazy, LazyGroup
from chassis.config.env import EnvVars

INTERNAL_ERROR = 1
VERIFICATION_FAILED = 8
"""The exit code of a record or ledger that does not verify (guides/operations.md)."""
INTERRUPTED = 130
DEBUG_ENV = "CHASSIS_DEBUG"

# paramiko logs a failed handshake (with its traceback) from its own thread;
# with no handler Python prints that to stderr, once per host. Not without --debug.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


COMMANDS = {
    "audit": Lazy(
        "chassis.cli.audit:audit_group", "Replay and inspect recorded history (never writes)."
    ),
    "consent": Lazy(
        "chassis.cli.consent_cmd:consent_group",
        "Two-person consent: approvers permit promoting a candidate release.",
    ),
    "demo": Lazy(
        "chassis.cli.demo_cmd:demo_command",
        "Deploy the sample app (three HTTP services) to three local hosts: v1, v2, then a v3 "
        "that fails its health gate and is restored to v2.",
    ),
    "deploy": Lazy(
        "chassis.cli.deploy_cmd:deploy_command",
        "Deploy RELEASE of APP to ENV: upload, verify on the host, unpack, configure, start, "
        "health-gate, swap; restore the previous release if it fails.",
    ),
    "evolution": Lazy(
        "chassis.cli.evolution_cmd:evolution_group",
        "Gate a candidate release (trial, score, consent, swap, rollback drill) and prove it.",
    ),
    "doctor": Lazy(
        "chassis.cli.doctor_cmd:doctor_command",
        "Preflight checks: Python, workspace, ledger, keys, the release store, every host "
        "(SSH with a known host key, python3, disk under its root, systemd), package shadowing.",
    ),
    "hardware": Lazy(
        "chassis.cli.hardware:hardware_group", "Check hosts against runtime hardware requirements."
    ),
    "history": Lazy(
        "chassis.cli.status_cmd:history_command",
        "Every revision (time, operation, release, status, who, description) and the last "
        "successful one.",
    ),
    "host": Lazy(
        "chassis.cli.host:host_group",
        "Register hosts, gather their facts, pin their SSH host keys.",
    ),
    "init": Lazy(
        "chassis.cli.init_cmd:init_command",
        "Create a workspace and its ledger, with a new root key as the root of trust.",
    ),
    "key": Lazy("chassis.cli.key:key_group", "Create, trust, revoke and list signing keys."),
    "lease": Lazy(
        "chassis.cli.lease:lease_group", "Leases: one operation at a time per app and environment."
    ),
    "ledger": Lazy("chassis.cli.ledger:ledger_group", "Inspect and verify the event ledger."),
    "model": Lazy(
        "chassis.cli.model:model_group",
        "Model assets: record, materialize on hosts with verified bytes, cache, swap.",
    ),
    "plan": Lazy(
        "chassis.cli.deploy_cmd:plan_command",
        "Compile the deployment plan and print it with its digest; changes nothing.",
    ),
    "proof": Lazy(
        "chassis.cli.proof:proof_group",
        "Issue and verify proofs that strangers can check offline.",
    ),
    "prune": Lazy(
        "chassis.cli.reconcile_cmd:prune_command",
        "Remove old release directories of APP in ENV from its hosts.",
    ),
    "receipts": Lazy(
        "chassis.cli.receipts:receipts_group", "List, show and export operation receipts."
    ),
    "reconcile": Lazy(
        "chassis.cli.reconcile_cmd:reconcile_command",
        "Check that the hosts of APP in ENV run what the ledger says; record any drift.",
    ),
    "recover": Lazy(
        "chassis.cli.recover_cmd:recover_command",
        "Recover APP in ENV after a crashed deploy: complete it or restore the previous release.",
    ),
    "logs": Lazy(
        "chassis.cli.logs_cmd:logs_command",
        "Print the last lines each component of APP in ENV wrote (-f: and follow).",
    ),
    "redeploy": Lazy(
        "chassis.cli.deploy_cmd:redeploy_command",
        "Restart APP in ENV on its current release, re-reading env references.",
    ),
    "remove": Lazy(
        "chassis.cli.restart_cmd:remove_command",
        "Stop APP in ENV everywhere and record it removed.",
    ),
    "restart": Lazy(
        "chassis.cli.restart_cmd:restart_command",
        "Restart the components of APP in ENV through the health gate.",
    ),
    "release": Lazy(
        "chassis.cli.release:release_group",
        "Register release bundles (content-addressed) and list them.",
    ),
    "rollback": Lazy(
        "chassis.cli.rollback_cmd:rollback_command",
        "Roll APP in ENV back to an earlier revision's exact state (releases, config, processes).",
    ),
    "secret": Lazy(
        "chassis.cli.secret_cmd:secret_group",
        "Secrets encrypted to recipient keys, stored beside the ledger.",
    ),
    "stack": Lazy(
        "chassis.cli.stack:stack_group",
        "Validate chassis.toml and show where each node group would run.",
    ),
    "status": Lazy(
        "chassis.cli.status_cmd:status_command",
        "What runs where, as last observed: host, component, release, revision, state, health, "
        "restarts, and when it was observed.",
    ),
}
"""Every top-level command, imported only when used (``chassis.cli.lazy``);
the short help is what ``chassis --help`` lists."""


class ChassisGroup(LazyGroup):
    """Maps errors to one stderr line and their exit code, here only: typed
    errors to theirs, anything else (a bug) to 1; the traceback with --debug."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from chassis.references import strip_references

        return super().parse_args(ctx, strip_references(args))

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
            from proofs.redaction import scrub_text

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
    from proofs.redaction import scrub_text

    click.echo(scrub_text(traceback.format_exc()).rstrip("\n"), err=True)


class _StderrHandler(logging.Handler):
    """Library log records to whatever ``sys.stderr`` is when they come."""

    def emit(self, record: logging.LogRecord) -> None:
        from proofs.redaction import scrub_text

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
    lazy=COMMANDS,
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


def main() -> None:
    """Console-script entry point.

    The command has finished when click returns: every ``with`` and
    ``finally`` has run, the ledger and connections are closed. What the
    interpreter would still do is tear down every module and object one by
    one (about 0.06 s after a one-host deploy: paramiko, cryptography, ...),
    so the process ends here instead, after the exit handlers and with its
    output flushed. ``CHASSIS_FULL_EXIT=1`` keeps the ordinary exit."""
    try:
        cli(prog_name="chassis")
        code: int = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit("message"): printed as the interpreter would
            print(e.code, file=sys.stderr)
            code = 1
    if os.environ.get(EnvVars.FULL_EXIT) == "1":
        sys.exit(code)
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown: the exit handlers
    run (temporary files, logging), the output is flushed, then ``os._exit``.
    Threads still running are ended with it; the engine joins every worker
    before a command returns, so none of them is doing a command's work."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            # A reader that went away (``chassis history | head``): nothing more
            # can be said, and Python's own exit would report 120 for it.
            code = code or 120
    os._exit(code)
