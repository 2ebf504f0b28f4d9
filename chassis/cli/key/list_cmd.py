"""``chassis key list``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table
from chassis.cli.key.render import key_data
from chassis.keyring import local_keyids
from chassis.trust_admin import require_trust


@click.command("list", epilog="Example: chassis key list --json | jq '.[].name'")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """List every key the ledger has trusted, active or revoked."""
    trust = require_trust(app.ledger())
    here = local_keyids(app.keys_dir)
    keys = list(trust.keys.values())
    data = [key_data(k, local=k.keyid in here) for k in keys]
    rows = [
        [
            k.name,
            k.keyid[:16],
            ",".join(k.roles),
            "active" if k.active else "revoked",
            "yes" if k.keyid in here else "no",
            k.trusted_at,
        ]
        for k in keys
    ]
    app.emit(
        data,
        as_json=as_json,
        human=lambda: table(rows, ["NAME", "KEYID", "ROLES", "STATUS", "LOCAL", "TRUSTED"]),
    )
