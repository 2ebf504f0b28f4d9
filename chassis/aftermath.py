"""What runs after every command that opened the ledger to write (and after
each of the demo's operations).

Each step is wrapped on its own: a failure here is one warning line and never
changes the command's own result or exit status (its events are already
stored; the next command or ``chassis ledger checkpoint`` catches up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chassis.checkpoints import checkpoint_after, checkpoint_origin, open_log, sync_log
from chassis.errors import ChassisError
from chassis.receipts import LedgerPosition, StoredReceipt, issue_pending
from chassis.stack.schema import ExportSpec
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.keys import KeyPair
from proofs.log import StoredCheckpoint

if TYPE_CHECKING:
    from chassis.cli.app import App


@dataclass
class Settled:
    checkpoint: StoredCheckpoint | None = None
    receipts: list[StoredReceipt] = field(default_factory=list)


def settle(
    ledger: Ledger,
    ws: Workspace,
    signer: KeyPair,
    note: Callable[[str], None],
    export: Callable[[], ExportSpec | None] = lambda: None,
) -> Settled:
    """Checkpoint what was appended, issue the receipts of the operations it
    completed (which cite that checkpoint), then export them when
    ``[export] auto`` is on. Each step fails on its own, as one warning."""
    settled = Settled()

    def checkpoint() -> None:
        settled.checkpoint = checkpoint_after(ledger, ws, signer, note)

    def receipts() -> None:
        settled.receipts = issue_pending(ledger, ws, signer, note, position=log_position)

    def exported() -> None:
        settings = export()
        if settings is not None and settings.auto_destination is not None:
            # The export plane (urllib, the outbox) loads only where it is on.
            from chassis.export import export_after

            export_after(ledger, ws, settings, note)

    for name, action in (("checkpoint", checkpoint), ("receipts", receipts), ("export", exported)):
        try:
            action()
        except Exception as e:  # never mask the command's own result
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            note(f"chassis: warning: {name} after the command failed: {message}")
    return settled


def after_command(app: App) -> None:
    """``settle`` after a CLI command that opened the ledger to write."""
    ledger = app._ledger
    if ledger is None or ledger.signer is None:
        return

    def export() -> ExportSpec | None:
        try:
            return app.stack().export
        except ChassisError:
            return None  # a stack that does not validate is reported where it is needed

    settle(ledger, app.workspace, ledger.signer, app.note, export)


def log_position(ledger: Ledger) -> LedgerPosition:
    """The tree a receipt cites: the latest signed checkpoint if it covers the
    whole log, else the log itself (unsigned: the acting key lacks the role)."""
    log = open_log(ledger)
    size, _ = sync_log(ledger, log)
    origin = checkpoint_origin(ledger)
    latest = log.latest_checkpoint()
    if latest is not None and latest.size == size:
        return LedgerPosition(
            latest.size, latest.root.hex(), origin, log.leaf_index, log.leaf_indices
        )
    return LedgerPosition(
        size or None, log.root().hex() if size else None, origin, log.leaf_index, log.leaf_indices
    )
