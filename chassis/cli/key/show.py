"""``chassis key show``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app
from chassis.cli.key.render import key_data, show_key
from chassis.keyring import local_keyids
from chassis.trust_admin import require_trust


@click.command("show", epilog="Example: chassis key show ci-bot")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
@pass_app
def show_command(app: App, key: str, as_json: bool) -> None:
    """Show KEY (name, key id or 8+ digit prefix) as the ledger knows it."""
    found = require_trust(app.ledger()).find(key)
    local = found.keyid in local_keyids(app.keys_dir)
    app.emit(
        key_data(found, local=local), as_json=as_json, human=lambda: show_key(found, local=local)
    )
