"""How a trusted key is shown."""

from __future__ import annotations

from typing import Any

import click

from ledger.trust import TrustedKey


def key_data(key: TrustedKey, *, local: bool) -> dict[str, Any]:
    return {
        "keyid": key.keyid,
        "name": key.name,
        "roles": key.roles,
        "public_key": key.public_key,
        "status": "active" if key.active else "revoked",
        "trusted_at": key.trusted_at,
        "revoked_at": key.revoked_at,
        "revoked_reason": key.revoked_reason,
        "private_key_here": local,
    }


def show_key(key: TrustedKey, *, local: bool) -> None:
    for label, value in key_data(key, local=local).items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        click.echo(f"{label + ':':18}{value}")
