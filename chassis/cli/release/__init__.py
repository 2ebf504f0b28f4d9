"""``chassis release …``: release bundles."""

from __future__ import annotations

from pathlib import Path

import click

from chassis.cli.app import App, pass_app, table


@click.group("release", epilog="Example: chassis release add v2 --artifact dist/shop-v2.tar.gz")
def release_group() -> None:
    """Register release bundles (content-addressed) and list them."""


@release_group.command(
    "add",
    epilog="""\b
Examples:
  chassis release add v2 --artifact dist/shop-v2.tar.gz
  chassis release add v2-debug --artifact dist/shop-v2.tar.gz --config LOG_LEVEL=debug
  chassis release add v2-eu --artifact dist/shop-v2.tar.gz \\
      --config REGION=eu --config 'GREETING=hi "there"'

\b
A config KEY is an environment variable name (letters, digits and '_', not
starting with a digit); anything else is refused with exit 3 before anything
is recorded. VALUEs are data, passed to the components exactly as given: any
text except NUL and Unicode non-characters (which systemd cannot carry).""",
)
@click.argument("label")
@click.option(
    "--artifact",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A .tar.gz bundle.",
)
@click.option(
    "--config",
    "config",
    multiple=True,
    metavar="KEY=VALUE",
    help="An environment variable for every component of the release (repeatable; not "
    "secrets). KEY: letters, digits and '_', not starting with a digit.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the release as JSON.")
@pass_app
def add_command(
    app: App, label: str, artifact: Path, config: tuple[str, ...], as_json: bool
) -> None:
    """Copy a bundle into the workspace store and register it as LABEL."""
    from chassis.engine.releases import add_release, check_release_input

    values: dict[str, str] = {}
    for item in config:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--config")
        values[key] = value
    check_release_input(label, values)  # refused before the ledger is opened
    release = add_release(
        app.ledger(signing=True), app.workspace, app.stack().app.name, label, artifact, values
    )
    data = {
        "label": release.label,
        "release_id": release.release_id,
        "bundle_sha256": release.bundle_sha256,
        "bytes": release.bundle_size,
        "config": release.config,
    }
    app.emit(
        data,
        as_json=as_json,
        human=lambda: click.echo(f"release {label}: {release.release_id[:16]}"),
    )


@release_group.command("list", epilog="Example: chassis release list --json")
@click.option("--json", "as_json", is_flag=True, help="Print releases as JSON.")
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """Registered releases of this workspace's app."""
    from chassis.engine.releases import all_releases

    releases = all_releases(app.ledger(), app.stack().app.name)
    rows = [
        [r.label, r.release_id[:16], r.bundle_sha256[:16], str(r.bundle_size)] for r in releases
    ]
    app.emit(
        [
            {
                "label": r.label,
                "release_id": r.release_id,
                "bundle_sha256": r.bundle_sha256,
                "bytes": r.bundle_size,
                "config": r.config,
            }
            for r in releases
        ],
        as_json=as_json,
        human=lambda: table(rows, ["LABEL", "RELEASE", "BUNDLE SHA256", "BYTES"]),
    )
