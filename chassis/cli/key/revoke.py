"""``chassis key revoke``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app
from chassis.cli.key.render import key_data, show_key
from chassis.keyring import local_keyids
from chassis.trust_admin import revoke_key


@click.command(
    "revoke",
    epilog="Example: chassis key revoke 4a3712a5 --reason 'laptop lost'",
)
@click.argument("key")
@click.option("--reason", required=True, help="Why; recorded in the ledger.")
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
@pass_app
def revoke_command(app: App, key: str, reason: str, as_json: bool) -> None:
    """Revoke KEY (name, key id or 8+ digit prefix).

    Events the key signs after this fail verification.
    """
    revoked = revoke_key(app.ledger(signing=True), key, reason=reason)
    local = revoked.keyid in local_keyids(app.keys_dir)
    app.emit(
        key_data(revoked, local=local),
        as_json=as_json,
        human=lambda: show_key(revoked, local=local),
    )
