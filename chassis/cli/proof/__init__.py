"""``chassis proof …``: issuing and verifying proofs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from chassis.cli.app import App, pass_app
from chassis.cli.proof.tlog import consistency_command, inclusion_command, verify_tlog
from chassis.errors import WorkspaceError
from proofs.rollback import ProofCheckError
from proofs.tlog_proof import HEADER as TLOG_PROOF_HEADER

if TYPE_CHECKING:  # chassis.rollback_proof reaches the engine: imported when used
    from chassis.rollback_proof import ProofReport


@click.group("proof", epilog="Example: chassis proof rollback shop --env prod --out rb.json")
def proof_group() -> None:
    """Issue and verify proofs that strangers can check offline."""


@proof_group.command(
    "rollback",
    epilog="""\b
Verifies the whole ledger, replays the target state again, and signs (with the
acting key) a DSSE envelope holding an in-toto Statement: subject the target
release, predicate the verification result, target revision and version, both
state digests, health evidence and the ledger positions of the events cited.
Exit status: 0, 8 the ledger (or the installations view) does not verify, 10 no
such rollback.
Examples:
  chassis proof rollback shop --env prod --out rollback.dsse.json
  chassis proof rollback shop --env prod --revision 7""",
)
@click.argument("app_name", metavar="APP")
@click.option("--env", "environment", required=True)
@click.option(
    "--revision", type=click.IntRange(min=1), help="The rollback revision [default: newest]."
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout."
)
@pass_app
def rollback_command(
    app: App, app_name: str, environment: str, revision: int | None, out: Path | None
) -> None:
    """Write a signed proof that a rollback restored exactly its target's state."""
    from chassis.rollback_proof import rollback_proof

    envelope = rollback_proof(
        app.ledger(),
        app.workspace,
        app.signer(),
        app=app_name,
        environment=environment,
        revision=revision,
    )
    text = json.dumps(envelope, indent=2, sort_keys=True) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    app.note(f"wrote {out}")


@proof_group.command(
    "verify",
    epilog="""\b
Checks, in order, failing closed at the first that fails (named in the error):
with the workspace's ledger at hand, first the whole ledger (ledger: every
digest, link and signature, as 'chassis ledger verify'), since trust and every
later check read it; then the DSSE signature against trusted keys (a revoked
key fails), the statement and its internal consistency (the target state shown
has its digest; the subjects are exactly the releases it runs); then, with the
ledger, that every cited event exists at its position with its digest, that the
rollback's intent event recorded the target and the revision undone that the
proof states (intent), that the rollback's own events recorded its op id,
revision, status and description as the proof states them (outcome), and that
folding the installation's verified events gives both state digests and the
target revision's release (target-release).
Trusted keys: --trusted-keys DIR (*.pub files, offline, no ledger) or the
workspace's trust state (the default inside a workspace).
A .tlog-proof file (from 'chassis proof inclusion') is checked with --key
alone, offline: its layout (proof-format), the checkpoint's signature
(checkpoint-signature), then the event digest's inclusion under its root
(inclusion). KEYFILE is a signed-note verifier key (name+id+key, from
'chassis ledger checkpoint --json') or a .pub key file.
Exit status: 0 verified, 8 a check failed, 3 no keys to verify with, 5 bad key
file, 2 a .tlog-proof without --key.
Examples:
  chassis proof verify rollback.dsse.json
  chassis proof verify rollback.dsse.json --trusted-keys ./operator-keys --json
  chassis proof verify event-42.tlog-proof --key shop.vkey""",
)
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--trusted-keys",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of trusted *.pub keys (offline: the ledger is not consulted).",
)
@click.option(
    "--workspace", "use_workspace", is_flag=True, help="Use the workspace's trust and ledger."
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="For a .tlog-proof: the log's verifier key (vkey) or .pub file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_app
def verify_command(
    app: App,
    file: Path,
    trusted_keys: Path | None,
    use_workspace: bool,
    key_file: Path | None,
    as_json: bool,
) -> None:
    """Verify a proof file offline."""
    head = file.read_bytes()[: len(TLOG_PROOF_HEADER)]
    if head == TLOG_PROOF_HEADER.encode():
        verify_tlog(app, file.read_text(encoding="utf-8", errors="replace"), key_file, as_json)
        return
    from chassis.rollback_proof import load_envelope

    envelope = load_envelope(file)
    try:
        report = _verify(app, envelope, trusted_keys, use_workspace)
    except ProofCheckError as e:
        if as_json:
            failed = {"ok": False, "check": e.check, "detail": e.detail}
            app.emit(failed, as_json=True, human=lambda: None)
        raise

    def human() -> None:
        click.echo(f"OK: {report.kind} signed by {report.keyid[:16]}")
        for check in report.checks:
            click.echo(f"  {check.name}: {check.detail}")

    app.emit(report.to_dict(), as_json=as_json, human=human)


def _verify(
    app: App, envelope: dict[str, object], trusted_keys: Path | None, use_workspace: bool
) -> ProofReport:
    from chassis.rollback_proof import keys_from_dir, verify_in_workspace, verify_rollback_envelope

    if trusted_keys is not None and not use_workspace:
        return verify_rollback_envelope(envelope, keys_from_dir(trusted_keys))
    try:
        ledger = app.ledger()
    except WorkspaceError:
        raise WorkspaceError(
            "no workspace here: give --trusted-keys DIR to verify offline"
        ) from None
    pinned = keys_from_dir(trusted_keys) if trusted_keys is not None else None
    return verify_in_workspace(envelope, app.workspace, ledger, trusted_keys=pinned)


proof_group.add_command(inclusion_command)
proof_group.add_command(consistency_command)
