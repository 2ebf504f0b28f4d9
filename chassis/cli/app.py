"""The object every command receives: resolves the workspace, the ledger and
the acting key lazily, and owns output (data to stdout, notes to stderr).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from chassis.engine.executor import scrubbed_data
from chassis.keyring import load_acting_key
from chassis.stack.spec import Stack, load_stack
from chassis.workspace import Workspace, keys_dir
from ledger.application import Ledger
from ledger.keys import KeyPair
from ledger.storage import open_ledger
from proofs.redaction import scrub_text


@dataclass
class App:
    workspace_path: Path | None = None
    key_ref: str | None = None
    _workspace: Workspace | None = field(default=None, repr=False)
    _ledger: Ledger | None = field(default=None, repr=False)
    _stack: Stack | None = field(default=None, repr=False)

    @property
    def keys_dir(self) -> Path:
        return keys_dir()

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace.find(self.workspace_path)
        return self._workspace

    def stack(self) -> Stack:
        """The workspace's validated stack file."""
        if self._stack is None:
            self._stack = load_stack(self.workspace.stack_file)
        return self._stack

    def signer(self) -> KeyPair:
        ref = self.key_ref or self.workspace.settings().default_key
        return load_acting_key(self.keys_dir, ref)

    def ledger(self, *, signing: bool = False) -> Ledger:
        """The workspace ledger; with ``signing`` it can append as the acting key."""
        if self._ledger is None or (signing and self._ledger.signer is None):
            signer = self.signer() if signing else None
            self._ledger = open_ledger(self.workspace.storage(), signer)
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            try:
                if self._ledger.signer is not None:
                    from chassis.aftermath import after_command

                    after_command(self)  # checkpoint what this command appended
            finally:
                self._ledger.close()
                self._ledger = None

    # Output.

    def emit(self, data: Any, *, as_json: bool, human: Callable[[], None]) -> None:
        """Print ``data`` as JSON with ``--json``, else let ``human`` render it."""
        if as_json:
            click.echo(json.dumps(scrubbed_data(data), indent=2, sort_keys=True))
        else:
            human()

    def note(self, message: str) -> None:
        click.echo(scrub_text(message), err=True)


pass_app = click.make_pass_decorator(App)


def table(rows: list[list[str]], headers: list[str]) -> None:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        click.echo(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip()
        )
