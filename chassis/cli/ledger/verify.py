"""``chassis ledger verify``."""

from __future__ import annotations

from pathlib import Path

import click

from chassis.audit import verify_workspace
from chassis.cli.app import App, pass_app
from proofs.chain import LedgerVerificationError
from proofs.checkpoint_verify import CheckpointError


@click.command(
    "verify",
    epilog="""\b
Checks every record (digest, link, key, signature) and then, from the same
read, the checkpoints: the latest stored one (signature by a key valid as of
its tree, and its root recomputed from the records), the last one this
workspace saw (.chassis/last-checkpoint) and each --against file (signature,
and a consistency proof to the current tree). --fast checks digests, links and
the Merkle root, lets the newest checkpoint that holds cover the events up to
it, and verifies every event after it in full. Reasons: truncated,
root-mismatch, inconsistent, bad-checkpoint-signature, unknown-checkpoint-key.
Exit status: 0 verified, 8 verification failed (first bad event or checkpoint
named).
Examples:
  chassis ledger verify
  chassis ledger verify --fast --against shop-2026-05-01.checkpoint
  chassis ledger verify --json | jq .checkpoints""",
)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Signature worker processes [default: cores]."
)
@click.option(
    "--fast",
    is_flag=True,
    help="Events covered by a checkpoint that holds: chains and Merkle root only; "
    "events after it: verified in full.",
)
@click.option(
    "--against",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A checkpoint note kept earlier; the ledger must extend it (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (also on failure).")
@pass_app
def verify_command(
    app: App, workers: int | None, fast: bool, against: tuple[Path, ...], as_json: bool
) -> None:
    """Recompute every digest and link; check every signature against trust as of its event."""
    ledger = app.ledger()
    try:
        report = verify_workspace(
            app.workspace, ledger, workers=workers, fast=fast, against=against
        )
    except LedgerVerificationError as e:
        if as_json:
            app.emit({"ok": False, **e.failure.to_dict()}, as_json=True, human=lambda: None)
        raise
    except CheckpointError as e:
        if as_json:
            app.emit({"ok": False, **e.to_dict()}, as_json=True, human=lambda: None)
        raise
    data = {"ok": True, **report.to_dict()}

    def human() -> None:
        if report.mode == "fast":
            covered = (
                f"{report.covered} covered by checkpoint {report.covered} (digests, links, root)"
                if report.covered
                else "none covered by a checkpoint"
            )
            click.echo(
                f"OK (fast): {report.events} events in {report.aggregates} aggregates: "
                f"{covered}, {report.verified_in_full} verified in full "
                f"({report.signatures} signatures, {report.workers} worker(s))"
            )
        else:
            click.echo(
                f"OK: {report.events} events in {report.aggregates} aggregates, "
                f"{report.signatures} signatures verified ({report.workers} worker(s))"
            )
        click.echo(
            f"  root of trust: {report.root_keyid}  keys: {report.keys}  "
            f"last seq: {report.last_seq}"
        )
        click.echo(f"  tree: {report.size} leaves, root {report.root.hex()}")
        for checked in report.checked:
            click.echo(
                f"  {checked.source}: size {checked.size}, signed by {checked.signer}: "
                f"{checked.check}"
            )
        click.echo(f"  checkpoints: {report.note}")

    app.emit(data, as_json=as_json, human=human)
