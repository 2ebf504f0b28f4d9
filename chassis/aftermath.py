"""What runs after every command that opened the ledger to write.

Each step is wrapped on its own: a failure here is one warning line and never
changes the command's own result or exit status (its events are already
stored; the next command or ``chassis ledger checkpoint`` catches up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chassis.checkpoints import checkpoint_after

if TYPE_CHECKING:
    from chassis.cli.app import App


def after_command(app: App) -> None:
    """Checkpoint what the command appended (further steps go after it)."""
    ledger = app._ledger
    if ledger is None or ledger.signer is None:
        return
    signer = ledger.signer
    _step(app, "checkpoint", lambda: checkpoint_after(ledger, app.workspace, signer, app.note))


def _step(app: App, name: str, action: Callable[[], object]) -> None:
    try:
        action()
    except Exception as e:  # never mask the command's own result
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        app.note(f"chassis: warning: {name} after the command failed: {message}")
