"""``chassis proof inclusion|consistency`` and offline ``.tlog-proof`` checks."""

from __future__ import annotations

from pathlib import Path

import click

from chassis.cli.app import App, pass_app
from chassis.inclusion import consistency_for, inclusion_for, verify_tlog_file
from ledger.errors import LedgerError
from ledger.keys import KeyPair
from proofs.tlog_verify import TlogCheckError


@click.command(
    "inclusion",
    epilog="""\b
EVENT is a sequence number (as in 'chassis ledger log') or a 64-hex-digit
event digest. Only an event that verifies gets a proof. The proof is against
the latest checkpoint (signed by a key valid as of its tree); if that does not
cover the event yet and the acting key holds 'checkpoint', one is signed
first, over verified events. Output: the C2SP tlog-proof form
(guides/proofs.md), whose 'extra' line is the event digest; anyone with the
log's key checks it offline with 'chassis proof verify FILE --key KEYFILE'.
Exit status: 0, 3 bad EVENT, 8 the event or a new one does not verify, or the
checkpoint or the stored log does not hold, 10 no such event, or no
checkpoint covers it.
Examples:
  chassis proof inclusion 42 --out event-42.tlog-proof
  chassis proof inclusion 3f1c…(64 hex) --json | jq .proof""",
)
@click.argument("event", metavar="SEQ|DIGEST")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout."
)
@click.option("--json", "as_json", is_flag=True, help="Index, tree size, root, hashes and file.")
@pass_app
def inclusion_command(app: App, event: str, out: Path | None, as_json: bool) -> None:
    """Prove that one event is in the ledger's Merkle log."""
    ledger = app.ledger()
    signer: KeyPair | None
    try:
        signer = app.signer()
    except LedgerError:
        signer = None  # proofs against existing checkpoints need no key
    result = inclusion_for(ledger, app.workspace, signer, event)
    text = result.text()
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
        app.note(f"wrote {out}")
    data = result.to_dict()
    if as_json or out is None:
        app.emit(data, as_json=as_json, human=lambda: click.echo(text, nl=False))


@click.command(
    "consistency",
    epilog="""\b
Prints the RFC 9162 consistency proof that the tree of NEW_SIZE events extends
the tree of OLD_SIZE events, with both roots (base64), checked before it is
printed. Sizes count events, 1 <= OLD_SIZE <= NEW_SIZE <= events so far.
Exit status: 0, 3 bad sizes.
Examples:
  chassis proof consistency 10 42
  chassis proof consistency 10 42 --json | jq .proof""",
)
@click.argument("old_size", type=int)
@click.argument("new_size", type=int)
@click.option("--json", "as_json", is_flag=True, help="Sizes, roots and proof hashes.")
@pass_app
def consistency_command(app: App, old_size: int, new_size: int, as_json: bool) -> None:
    """Prove that a later tree extends an earlier one."""
    result = consistency_for(app.ledger(), old_size, new_size)
    data = result.to_dict()

    def human() -> None:
        click.echo(f"old {result.old_size} {data['old_root']}")
        click.echo(f"new {result.new_size} {data['new_root']}")
        for line in data["proof"]:
            click.echo(line)

    app.emit(data, as_json=as_json, human=human)


def verify_tlog(app: App, text: str, key: Path | None, as_json: bool) -> None:
    """``proof verify FILE.tlog-proof --key KEYFILE``: no ledger, no workspace."""
    if key is None:
        raise click.UsageError("a .tlog-proof file needs --key KEYFILE (a vkey or a .pub key)")
    try:
        proven = verify_tlog_file(text, key)
    except TlogCheckError as e:
        if as_json:
            failed = {"ok": False, "check": e.check, "reason": str(e.reason), "detail": e.detail}
            app.emit(failed, as_json=True, human=lambda: None)
        raise
    data = proven.to_dict()

    def human() -> None:
        click.echo(
            f"OK: event {proven.digest.hex()} is leaf {proven.index} of {proven.origin} "
            f"at tree size {proven.tree_size}"
        )
        click.echo(f"  root: {data['root']} ({proven.root.hex()})")
        click.echo(f"  checkpoint signed by: {proven.key}")

    app.emit(data, as_json=as_json, human=human)
