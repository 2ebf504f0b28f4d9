"""``chassis doctor``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table

DOCTOR_FAILED = 14


@click.command(
    "doctor",
    epilog="""\b
Exit status: 0 when no check fails (warnings allowed), 14 otherwise.
A host at a placeholder address (reserved for examples: 192.0.2.0/24,
198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, example.com, *.example,
*.invalid) is not contacted and fails, saying so: right after
'chassis init --example' that is the example's prod hosts. Replace their
addresses, remove the environment, or check the others only (--env dev).
Examples:
  chassis doctor
  chassis doctor --env dev
  chassis doctor --json | jq '.[] | select(.status != "pass")'""",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds to reach each host.",
)
@click.option(
    "--env",
    "environment",
    metavar="ENV",
    help="Check only the hosts of this environment [default: every host].",
)
@click.option("--json", "as_json", is_flag=True, help="Print checks as JSON.")
@pass_app
@click.pass_context
def doctor_command(
    ctx: click.Context, app: App, timeout: float, environment: str | None, as_json: bool
) -> None:
    """Preflight checks: Python, workspace, ledger, keys, the release store, every host (SSH with a
    known host key, python3, disk under its root, systemd), package shadowing."""
    from chassis.doctor import run_doctor

    checks = run_doctor(app.workspace_path, app.key_ref, timeout, environment)
    rows = [
        [
            c.name,
            c.status.upper(),
            c.detail + (f"  -> {c.fix}" if c.fix and c.status != "pass" else ""),
        ]
        for c in checks
    ]
    app.emit(
        [c.to_dict() for c in checks],
        as_json=as_json,
        human=lambda: table(rows, ["CHECK", "STATUS", "DETAIL"]),
    )
    if any(c.status == "fail" for c in checks):
        ctx.exit(DOCTOR_FAILED)
