"""``chassis ledger verify``."""

from __future__ import annotations

import click

from chassis.audit import verify_workspace_ledger
from chassis.cli.app import App, pass_app
from proofs.chain import LedgerVerificationError

TAIL_NOTE = "chains cannot show a truncated tail; compare with a checkpoint for that"


@click.command(
    "verify",
    epilog="""\b
Exit status: 0 verified, 8 verification failed (first bad event named).
Examples:
  chassis ledger verify
  chassis ledger verify --json | jq .reason""",
)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Signature worker processes [default: cores]."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (also on failure).")
@pass_app
def verify_command(app: App, workers: int | None, as_json: bool) -> None:
    """Recompute every digest and link; check every signature against trust as of its event."""
    ledger = app.ledger()
    try:
        result = verify_workspace_ledger(app.workspace, ledger, workers=workers)
    except LedgerVerificationError as e:
        if as_json:
            app.emit({"ok": False, **e.failure.to_dict()}, as_json=True, human=lambda: None)
        raise
    data = {"ok": True, **result.to_dict(), "note": TAIL_NOTE}

    def human() -> None:
        click.echo(
            f"OK: {result.events} events in {result.aggregates} aggregates, "
            f"{result.signatures} signatures verified ({result.workers} worker(s))"
        )
        click.echo(
            f"  root of trust: {result.root_keyid}  keys: {result.keys}  "
            f"last seq: {result.last_seq}"
        )
        click.echo(f"  note: {TAIL_NOTE}")

    app.emit(data, as_json=as_json, human=human)
