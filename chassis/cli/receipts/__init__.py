"""``chassis receipts …``: the signed receipt of every completed operation."""

from __future__ import annotations

import json

import click

from chassis.cli.app import App, pass_app, table
from chassis.cli.lazy import Lazy, LazyGroup
from chassis.inclusion import inclusion_for
from chassis.receipts import ReceiptStore


@click.group(
    "receipts",
    cls=LazyGroup,
    lazy={
        "export": Lazy(
            "chassis.cli.receipts.export:export_command",
            "Export receipts as OTLP/JSON, CloudEvents or DSSE to a file or an endpoint.",
        )
    },
    epilog="""\b
Every completed deploy, rollback, recover, repair, lease break, inventory
change and hardware admission yields a receipt: a DSSE envelope holding an
in-toto Statement v1, signed by the acting key, with secrets redacted.
Examples:
  chassis receipts list
  chassis receipts show 3f9a1c2e --statement
  chassis receipts show seq:42 --proof > deploy.tlog-proof""",
)
def receipts_group() -> None:
    """List, show and export operation receipts."""


@receipts_group.command("list", epilog="Example: chassis receipts list --json | jq '.[].digest'")
@click.option("--app", "app_name", help="Only this app's receipts.")
@click.option("--env", "environment", help="Only this environment's receipts.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def list_command(app: App, app_name: str | None, environment: str | None, as_json: bool) -> None:
    """Receipts in ledger order."""
    receipts = [
        r
        for r in ReceiptStore(app.ledger()).all()
        if (app_name is None or r.app == app_name)
        and (environment is None or r.environment == environment)
    ]
    data = [r.summary() for r in receipts]

    def human() -> None:
        rows = [
            [
                str(r["seq"]),
                r["digest"][:16],
                r["operation"],
                r["status"],
                f"{r['app']}/{r['environment']}",
                str(r["revision"] or ""),
                r["label"] or "",
                r["created"],
            ]
            for r in data
        ]
        table(rows, ["SEQ", "DIGEST", "OPERATION", "STATUS", "WHERE", "REV", "RELEASE", "AT"])

    app.emit(data, as_json=as_json, human=human)


@receipts_group.command(
    "show",
    epilog="""\b
RECEIPT is a digest (8+ hex digits) or seq:N (the ledger position of the event
that completed the operation).
Exit status: 0, 10 no such receipt.
Examples:
  chassis receipts show seq:42
  chassis receipts show 3f9a1c2e --statement""",
)
@click.argument("ref", metavar="RECEIPT")
@click.option("--statement", "decoded", is_flag=True, help="Print the decoded statement instead.")
@click.option(
    "--proof",
    "with_proof",
    is_flag=True,
    help="Print the inclusion proof (C2SP tlog-proof) of its event instead.",
)
@pass_app
def show_command(app: App, ref: str, decoded: bool, with_proof: bool) -> None:
    """Print a receipt's DSSE envelope (or its statement, or its inclusion proof)."""
    ledger = app.ledger()
    receipt = ReceiptStore(ledger).get(ref)
    if with_proof:
        click.echo(inclusion_for(ledger, app.workspace, None, str(receipt.seq)).text(), nl=False)
        return
    body = receipt.statement if decoded else receipt.envelope
    click.echo(json.dumps(body, indent=2, sort_keys=True))
