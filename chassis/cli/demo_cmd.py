"""``chassis demo``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(
    "demo",
    epilog="""\b
Examples:
  chassis demo                       # temporary workspace, processes stopped at the end
  chassis demo --workspace ./demo --keep && chassis -w ./demo status""",
)
@click.option(
    "--workspace",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    help="Create the demo workspace here (must not exist yet).",
)
@click.option("--keep", is_flag=True, help="Leave the demo's processes running.")
def demo_command(target: Path | None, keep: bool) -> None:
    """Deploy the sample app (three HTTP services) to three local hosts: v1, v2,
    then a v3 that fails its health gate and is restored to v2."""
    from chassis.demo import run_demo

    run_demo(target, keep, say=click.echo)
