"""The object every command receives: resolves the workspace, the ledger and
the acting key lazily, and owns output (data to stdout, notes to stderr).

Output is also where secret values end: ``scrubbed_output`` holds stdout and
stderr for the whole command, so no byte it prints (tables, ``--json``,
notes, errors, receipts shown) carries a secret value the command resolved,
whichever code path printed it.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click

from chassis.engine.executor import scrubbed_data
from chassis.keyring import load_acting_key
from chassis.stack.spec import Stack, load_stack
from chassis.workspace import Workspace, keys_dir
from ledger.application import Ledger
from ledger.keys import KeyPair
from ledger.storage import open_ledger
from proofs.redaction import (
    MIN_WORD_CHARS,
    SECRET_VALUES,
    clear_secrets,
    scrub_text,
    scrub_values,
)


@dataclass
class App:
    workspace_path: Path | None = None
    key_ref: str | None = None
    _workspace: Workspace | None = field(default=None, repr=False)
    _ledger: Ledger | None = field(default=None, repr=False)
    _stack: Stack | None = field(default=None, repr=False)
    skip_aftermath: bool = False
    """Set when the command failed because the ledger does not verify."""

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
                if self._ledger.signer is not None and not self.skip_aftermath:
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


class ScrubbedStream(io.TextIOBase):
    """A text stream writing through to ``target`` with the command's resolved
    secret values (every encoding) replaced. Only values: patterns would
    mangle legitimate output, and notes and errors get them on their own.
    No ``buffer``: click then writes text here instead of going around it."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self.target = target

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.target, "errors", None)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.target.write(scrub_values(text))
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def scrubbed_output() -> Iterator[None]:
    """For one command: start with no registered secret values, scrub the
    ones it resolves from stdout and stderr, warn about values too short to
    scrub, and forget them all at the end (entered by the CLI group before
    the command, so it closes after the command's own close: receipts and
    exports still see the values)."""
    clear_secrets()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbedStream(saved[0]), ScrubbedStream(saved[1])
    try:
        yield
    finally:
        try:
            for name in SECRET_VALUES.too_short():
                click.echo(
                    f"chassis: warning: {name} is shorter than {MIN_WORD_CHARS} characters: "
                    "it cannot be told from ordinary text and is not scrubbed from what "
                    "chassis records or prints",
                    err=True,
                )
        finally:
            sys.stdout, sys.stderr = saved
            clear_secrets()


def table(rows: list[list[str]], headers: list[str]) -> None:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        click.echo(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip()
        )
