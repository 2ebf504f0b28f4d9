"""``chassis init``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from chassis.cli.app import App, pass_app
from chassis.config.env import EnvVars
from chassis.trust_admin import init_workspace


@click.command(
    "init",
    epilog="""\b
Examples:
  chassis init                      # workspace in the current directory
  chassis init ./shop --name shop   # new directory, new root key 'shop-root'
  chassis init ./shop --example     # with a commented example stack file
  CHASSIS_LEDGER=postgresql://chassis@db:5432/chassis?schema=shop \\
    chassis init ./shop --key alice # join a shared ledger with a trusted key""",
)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--name", help="Workspace (and ledger) name; default: the directory name.")
@click.option(
    "--example",
    is_flag=True,
    help="Write a commented example chassis.toml (3 components, 3 profiles, dev and prod).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def init_command(app: App, directory: Path, name: str | None, example: bool, as_json: bool) -> None:
    """Create a workspace and its ledger, with a new root key as the root of trust.

    On a new ledger the root key (NAME-root, or --key) signs the genesis of
    trust. On a shared ledger that already has one, pass --key with a key it
    trusts. The private key is written to the key directory, never the workspace.
    """
    result = init_workspace(
        directory,
        name=name,
        key_name=app.key_ref,
        keys=app.keys_dir,
        ledger_url=os.environ.get(EnvVars.LEDGER),
        example=example,
    )
    data = {
        "workspace": str(result.workspace),
        "name": result.name,
        "root_keyid": result.root_keyid,
        "key": result.key_name,
        "created_key": result.created_key,
        "joined_existing_ledger": result.joined_existing_ledger,
        "ledger": result.ledger,
    }

    def human() -> None:
        verb = "Joined" if result.joined_existing_ledger else "Created"
        click.echo(f"{verb} workspace {result.name!r} at {result.workspace}")
        click.echo(f"  ledger: {result.ledger}")
        made = " (new, in " + str(app.keys_dir) + ")" if result.created_key else ""
        click.echo(f"  acting key: {result.key_name}{made}")
        click.echo(f"  root of trust: {result.root_keyid}")

    app.emit(data, as_json=as_json, human=human)
