"""``chassis key …``: keys and the ledger's trust in them."""

from __future__ import annotations

import click

from chassis.cli.lazy import Lazy, LazyGroup

COMMANDS = {
    "list": Lazy(
        "chassis.cli.key.list_cmd:list_command",
        "List every key the ledger has trusted, active or revoked.",
    ),
    "new": Lazy(
        "chassis.cli.key.new:new_command",
        "Generate key NAME in the key directory and trust it (needs an admin key).",
    ),
    "revoke": Lazy(
        "chassis.cli.key.revoke:revoke_command", "Revoke KEY (name, key id or 8+ digit prefix)."
    ),
    "show": Lazy(
        "chassis.cli.key.show:show_command",
        "Show KEY (name, key id or 8+ digit prefix) as the ledger knows it.",
    ),
    "trust": Lazy(
        "chassis.cli.key.trust:trust_command",
        "Trust someone's public key (PEM, or 64 hex digits) with ROLES (needs admin).",
    ),
}


@click.group(
    "key", cls=LazyGroup, lazy=COMMANDS, epilog="Example: chassis key new ci-bot --roles operator"
)
def key_group() -> None:
    """Create, trust, revoke and list signing keys."""
