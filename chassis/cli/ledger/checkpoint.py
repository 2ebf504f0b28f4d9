"""``chassis ledger checkpoint``."""

from __future__ import annotations

from pathlib import Path

import click

from chassis.checkpoints import checkpoint_json, checkpoint_now
from chassis.cli.app import App, pass_app


@click.command(
    "checkpoint",
    epilog="""\b
Signs (with the acting key, which needs role 'checkpoint') the Merkle root of
every event so far as a C2SP signed-note checkpoint, stores it in the ledger's
database and remembers it in .chassis/last-checkpoint. Only verified events
are signed over: the latest checkpoint must hold, and every event after it is
verified in full first. With nothing new since the latest checkpoint, prints
that one. Commands that append do this by themselves when their key holds the
role.
Exit status: 0, 6 the key lacks role 'checkpoint', 7 the ledger changed while
it was verified, 8 a new event does not verify (named), the latest checkpoint
does not hold, or the ledger is shorter than a checkpoint already signed.
Examples:
  chassis ledger checkpoint
  chassis ledger checkpoint --out shop-2026-05-01.checkpoint
  chassis ledger checkpoint --json | jq -r .vkey > shop.vkey""",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the note here."
)
@click.option(
    "--json", "as_json", is_flag=True, help="origin, size, root, note, keyid and verifier key."
)
@pass_app
def checkpoint_command(app: App, out: Path | None, as_json: bool) -> None:
    """Sign and store a checkpoint of the ledger now."""
    ledger = app.ledger(signing=True)
    result = checkpoint_now(ledger, app.workspace, app.signer())
    stored = result.checkpoint
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(stored.note, encoding="utf-8")
        tmp.replace(out)
        app.note(f"wrote {out}")
    data = {**checkpoint_json(stored, ledger), "new": result.new}

    def human() -> None:
        if not result.new:
            app.note(f"nothing new since the checkpoint of {stored.size} events")
        click.echo(stored.note, nl=False)

    app.emit(data, as_json=as_json, human=human)
