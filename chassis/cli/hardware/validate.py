"""``chassis hardware validate``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app

ADMISSION_REJECTED = 13


@click.command(
    "validate",
    epilog="""\b
Exit status: 0 admitted, 13 rejected (reason codes: no-gpu, too-few-gpus,
insufficient-vram, compute-capability-too-low, cuda-driver-out-of-range,
cuda-driver-unknown, insufficient-cores, insufficient-memory).
Built-in runtimes: cuda-small, cuda-large, cpu-only; more in [runtimes.NAME].
Example:
  chassis hardware validate --host gpu-1 --runtime cuda-small --json""",
)
@click.option("--host", "host_name", required=True, help="Registered or declared host.")
@click.option("--runtime", "runtime_name", required=True, help="Runtime name.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@pass_app
@click.pass_context
def validate_command(
    ctx: click.Context, app: App, host_name: str, runtime_name: str, as_json: bool
) -> None:
    """Admit or reject HOST for RUNTIME from its recorded hardware; the verdict
    is recorded in the ledger."""
    from chassis.hardware import validate_hardware

    verdict = validate_hardware(
        app.ledger(signing=True), app.workspace, app.stack(), host_name, runtime_name
    )

    def human() -> None:
        state = "admitted" if verdict.admitted else "rejected"
        click.echo(f"{host_name}: {state} for runtime {runtime_name}")
        for code, detail in verdict.reasons:
            click.echo(f"  {code}: {detail}")

    app.emit({"host": host_name, **verdict.to_dict()}, as_json=as_json, human=human)
    if not verdict.admitted:
        ctx.exit(ADMISSION_REJECTED)
