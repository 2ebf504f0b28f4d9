"""``chassis consent …``: an approver's signed permission to promote a candidate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from chassis.cli.app import App, pass_app, table

env_option = click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)


@click.group(
    "consent",
    epilog="""\b
Examples:
  chassis consent grant shop --env prod --candidate v2 --ttl 2h --reason 'reviewed #812'
  chassis consent list shop --env prod --json
  chassis consent revoke 3fa2c1d09e7b --env prod --reason 'found a regression'""",
)
def consent_group() -> None:
    """Two-person consent: approvers permit promoting a candidate release."""


@consent_group.command(
    "grant",
    epilog="""\b
The acting key must hold the 'approver' role (exit 6 otherwise). A grant
lets a *different* key promote the candidate with 'chassis evolution proof
--require-consent' until it expires or is revoked.
Exit status: 0 granted; 2 bad --ttl; 6 not an approver; 10 no such release.
Example: chassis --key alice consent grant shop --env prod --candidate v2 --ttl 2h""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--candidate", required=True, metavar="LABEL", help="The release to permit.")
@click.option("--ttl", default="1h", show_default=True, help="How long it stands (1m to 30d).")
@click.option("--reason", default="", metavar="TEXT", help="Recorded with the grant.")
@click.option("--json", "as_json", is_flag=True, help="Print the grant as JSON.")
@pass_app
def grant_command(
    app: App,
    app_name: str | None,
    environment: str | None,
    candidate: str,
    ttl: str,
    reason: str,
    as_json: bool,
) -> None:
    """Grant consent to promote the CANDIDATE release of APP in ENV."""
    from chassis.consent import grant, parse_ttl

    app_name, environment = app.target(app_name, environment)
    duration = parse_ttl(ttl)
    consent = grant(
        app.ledger(signing=True),
        app=app_name,
        environment=environment,
        label=candidate,
        ttl=duration,
        reason=reason,
        at=datetime.now(UTC),
    )
    data = _row(consent)
    app.emit(
        data,
        as_json=as_json,
        human=lambda: click.echo(
            f"consent {consent.short_id}: {app_name}/{environment} may promote {candidate} "
            f"until {consent.expires} (granted by {consent.granted_by[:16]})"
        ),
    )


@consent_group.command("list", epilog="Example: chassis consent list shop --env prod")
@click.argument("app_name", metavar="[APP]", required=False)
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--json", "as_json", is_flag=True, help="Print grants as JSON.")
@pass_app
def list_command(app: App, app_name: str | None, environment: str | None, as_json: bool) -> None:
    """Every consent for APP in ENV: candidate, who granted it, until when, and
    whether it stands (expired or revoked ones are listed too)."""
    from chassis.consent import consents

    app_name, environment = app.target(app_name, environment)
    now = datetime.now(UTC)
    data = [
        {**_row(c), "standing": c.standing(now) is None, "why_not": c.standing(now)}
        for c in consents(app.ledger(), app_name, environment)
    ]
    rows = [
        [
            d["id"][:12],
            d["candidate"],
            d["granted_by"][:16],
            d["expires"],
            "standing" if d["standing"] else str(d["why_not"]),
        ]
        for d in data
    ]
    app.emit(
        data,
        as_json=as_json,
        human=lambda: (
            table(rows, ["ID", "CANDIDATE", "GRANTED BY", "EXPIRES", "STATE"])
            if rows
            else click.echo(f"no consents for {app_name} in {environment}")
        ),
    )


@consent_group.command(
    "revoke",
    epilog="Exit status: 0 revoked; 6 not an approver; 9 already revoked; 10 no such consent.\n"
    "Example: chassis consent revoke 3fa2c1d09e7b --env prod --reason 'found a regression'",
)
@click.argument("consent_id", metavar="ID")
@click.option("--app", "app_name", default=None, help="Default: the workspace's app.")
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--reason", required=True, metavar="TEXT", help="Recorded with the revocation.")
@pass_app
def revoke_command(
    app: App, consent_id: str, app_name: str | None, environment: str | None, reason: str
) -> None:
    """Revoke consent ID (6+ digits of its id, as 'consent list' shows)."""
    from chassis.consent import find_consent, revoke

    app_name, environment = app.target(app_name, environment)
    ledger = app.ledger(signing=True)
    consent = find_consent(ledger, app_name, environment, consent_id)
    revoke(ledger, consent, reason)
    click.echo(f"consent {consent.short_id} revoked")


def _row(consent: object) -> dict[str, Any]:
    from ledger.consents import Consent

    assert isinstance(consent, Consent)
    return {
        "id": consent.id.hex,
        "app": consent.app,
        "environment": consent.environment,
        "candidate": consent.label,
        "release_id": consent.release_id,
        "granted_by": consent.granted_by,
        "expires": consent.expires,
        "reason": consent.reason,
        "revoked": consent.revoked,
    }
