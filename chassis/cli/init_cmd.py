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
  chassis init ./shop --key alice \\
    --ledger 'postgresql://chassis@db:5432/chassis?schema=shop'
                                    # join a shared ledger with a trusted key
The ledger URL (--ledger, else CHASSIS_LEDGER) is kept in .chassis/workspace.json,
never with a password: give that with PGPASSWORD or ~/.pgpass.""",
)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--name", help="Workspace (and ledger) name; default: the directory name.")
@click.option(
    "--example",
    is_flag=True,
    help="Write a commented example chassis.toml (3 components, 3 profiles, dev and prod).",
)
@click.option(
    "--ledger",
    "ledger_url",
    metavar="URL",
    help="Ledger URL (sqlite:///PATH or postgresql://USER@HOST:PORT/DB?schema=NAME), kept in "
    "the workspace for later commands [default: CHASSIS_LEDGER, else [ledger] url of "
    "chassis.toml, else .chassis/ledger.db].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def init_command(
    app: App,
    directory: Path,
    name: str | None,
    example: bool,
    ledger_url: str | None,
    as_json: bool,
) -> None:
    """Create a workspace and its ledger, with a new root key as the root of trust.

    On a new ledger the root key (NAME-root, or --key) signs the genesis of
    trust. On a shared ledger that already has one, pass --key with a key it
    trusts. The private key is written to the key directory, never the workspace.
    """
    if ledger_url is not None:
        from chassis.errors import WorkspaceError
        from ledger.storage import StorageConfig

        if StorageConfig.from_url(ledger_url).password:
            raise WorkspaceError(
                "--ledger: the URL has a password, which the workspace would keep in "
                ".chassis/workspace.json: leave it out and give it with PGPASSWORD or "
                "~/.pgpass, or pass the whole URL in CHASSIS_LEDGER instead"
            )
    result = init_workspace(
        directory,
        name=name,
        key_name=app.key_ref,
        keys=app.keys_dir,
        ledger_url=ledger_url or os.environ.get(EnvVars.LEDGER),
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
        "ledger_kept_in_workspace": result.remembered_ledger is not None,
    }

    def human() -> None:
        verb = "Joined" if result.joined_existing_ledger else "Created"
        click.echo(f"{verb} workspace {result.name!r} at {result.workspace}")
        click.echo(f"  ledger: {result.ledger}")
        made = " (new, in " + str(app.keys_dir) + ")" if result.created_key else ""
        click.echo(f"  acting key: {result.key_name}{made}")
        click.echo(f"  root of trust: {result.root_keyid}")

    if result.dropped_password:
        app.note(
            "the ledger URL is kept in .chassis/workspace.json without its password: "
            "give it with PGPASSWORD or ~/.pgpass, or keep CHASSIS_LEDGER set"
        )
    app.emit(data, as_json=as_json, human=human)
