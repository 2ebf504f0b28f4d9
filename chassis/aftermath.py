"""What runs after every command that opened the ledger to write.

Each step is wrapped on its own: a failure here is one warning line and never
changes the command's own result or exit status (its events are already
stored; the next command or ``chassis ledger checkpoint`` catches up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chassis.checkpoints import checkpoint_after, checkpoint_origin, open_log, sync_log
from chassis.errors import ChassisError
from chassis.export import export_after
from chassis.receipts import LedgerPosition, issue_pending
from ledger.application import Ledger

if TYPE_CHECKING:
    from chassis.cli.app import App


def after_command(app: App) -> None:
    """Checkpoint what the command appended, issue the receipts of the
    operations it completed (which cite that checkpoint), then export them
    when ``[export] auto`` is on."""
    ledger = app._ledger
    if ledger is None or ledger.signer is None:
        return
    signer = ledger.signer
    _step(app, "checkpoint", lambda: checkpoint_after(ledger, app.workspace, signer, app.note))
    _step(
        app,
        "receipts",
        lambda: issue_pending(ledger, app.workspace, signer, app.note, position=log_position),
    )
    _step(app, "export", lambda: _export(app, ledger))


def _export(app: App, ledger: Ledger) -> None:
    try:
        settings = app.stack().export
    except ChassisError:
        return  # a stack that does not validate is reported by the commands that need it
    export_after(ledger, app.workspace, settings, app.note)


def log_position(ledger: Ledger) -> LedgerPosition:
    """The tree a receipt cites: the latest signed checkpoint if it covers the
    whole log, else the log itself (unsigned: the acting key lacks the role)."""
    log = open_log(ledger)
    size, _ = sync_log(ledger, log)
    origin = checkpoint_origin(ledger)
    latest = log.latest_checkpoint()
    if latest is not None and latest.size == size:
        return LedgerPosition(latest.size, latest.root.hex(), origin, log.leaf_index)
    return LedgerPosition(size or None, log.root().hex() if size else None, origin, log.leaf_index)


def _step(app: App, name: str, action: Callable[[], object]) -> None:
    try:
        action()
    except Exception as e:  # never mask the command's own result
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        app.note(f"chassis: warning: {name} after the command failed: {message}")
