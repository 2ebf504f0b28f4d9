"""The object every command receives: resolves the workspace, the ledger and
the acting key lazily, and owns output (data to stdout, notes to stderr).

Output is also where secret values end: ``scrubbed_output`` holds stdout and
stderr for the whole command, so no byte it prints (tables, ``--json``,
notes, errors, receipts shown) carries a secret value the command resolved,
whichever code path printed it.

Colour only where a person reads it: a stream that is a terminal, and
``NO_COLOR`` unset or empty (https://no-color.org); anywhere else (a pipe, a
file, CI, the tests) the output is plain text without an escape code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

# Light on purpose: every command imports this module, ``chassis --version``
# and ``--help`` included. What opens the ledger, loads keys or reaches the
# engine is imported where it is used (``tests/cli/test_fast_start.py``).
if TYPE_CHECKING:
    from chassis.stack.spec import Stack
    from chassis.workspace import Workspace
    from ledger.application import Ledger
    from ledger.keys import KeyPair


T = TypeVar("T")


@dataclass
class App:
    workspace_path: Path | None = None
    key_ref: str | None = None
    _workspace: Workspace | None = field(default=None, repr=False)
    _ledger: Ledger | None = field(default=None, repr=False)
    _stack: Stack | None = field(default=None, repr=False)
    skip_aftermath: bool = False
    """Set when the command failed because the ledger does not verify."""
    _env_key_noted: bool = field(default=False, repr=False)

    @property
    def keys_dir(self) -> Path:
        from chassis.workspace import keys_dir

        return keys_dir()

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            from chassis.workspace import Workspace

            self._workspace = Workspace.find(self.workspace_path)
        return self._workspace

    def stack(self) -> Stack:
        """The workspace's validated stack file."""
        if self._stack is None:
            from chassis.stack.spec import load_stack

            self._stack = load_stack(self.workspace.stack_file)
        return self._stack

    def signer(self) -> KeyPair:
        """``CHASSIS_SIGNING_KEY`` when set (``--key`` is then ignored, with a
        note), else the key file ``--key`` or the workspace's default names."""
        from chassis.keyring import env_signing_key, load_acting_key

        from_env = env_signing_key()
        if from_env is not None:
            if self.key_ref and not self._env_key_noted:
                self._env_key_noted = True
                self.note(
                    f"acting as the key in CHASSIS_SIGNING_KEY "
                    f"({from_env.keyid[:16]}); --key/CHASSIS_KEY {self.key_ref!r} is ignored"
                )
            return from_env
        ref = self.key_ref or self.workspace.settings().default_key
        return load_acting_key(self.keys_dir, ref)

    def ledger(self, *, signing: bool = False) -> Ledger:
        """The workspace ledger; with ``signing`` it can append as the acting
        key, and the secret store reveals with that key for the command
        (``chassis.secrets.use_store``: deploys resolve ``{ secret = NAME }``)."""
        if self._ledger is None or (signing and self._ledger.signer is None):
            from ledger.storage import open_ledger

            signer = self.signer() if signing else None
            self._ledger = open_ledger(self.workspace.storage(), signer)
            if signer is not None:
                from chassis.secret_store import SecretStore
                from chassis.secrets import use_store

                use_store(SecretStore(self._ledger, signer))
        return self._ledger

    def close(self) -> None:
        if "chassis.secrets" in sys.modules:  # a store was made active: forget it
            from chassis.secrets import use_store

            use_store(None)
        if self._ledger is not None:
            try:
                if self._ledger.signer is not None and not self.skip_aftermath:
                    from chassis.aftermath import after_command

                    after_command(self)  # checkpoint what this command appended
            finally:
                self._ledger.close()
                self._ledger = None

    # Output.

    def target(self, app_name: str | None, environment: str | None) -> tuple[str, str]:
        """APP and ENV as given, else the workspace's app and ``[defaults] env``
        (or its only environment): short commands in a workspace."""
        stack = self.stack()
        return app_name or stack.app.name, environment or stack.default_environment()

    def when_free(
        self,
        ledger: Ledger,
        app_name: str,
        environment: str,
        wait_lock: int | None,
        action: Callable[[], T],
    ) -> T:
        """Run ``action`` (which takes the installation's lease); with
        ``--wait-lock`` first wait for a live holder (``chassis.engine.lease``)."""
        from chassis.engine.lease import lease_reader, when_lease_free

        return when_lease_free(
            lease_reader(ledger, app_name, environment),
            action,
            wait_s=wait_lock,
            progress=self.note,
        )

    def emit(self, data: Any, *, as_json: bool, human: Callable[[], None]) -> None:
        """Print ``data`` as JSON with ``--json``, else let ``human`` render it."""
        if as_json:
            click.echo(json.dumps(_scrubbed_data(data), indent=2, sort_keys=True))
        else:
            human()

    def note(self, message: str) -> None:
        """``message`` on stderr, scrubbed; its outcome words (a step's ``ok``,
        ``FAILED``, ``restored``) in colour on a terminal (:func:`coloured`)."""
        from proofs.redaction import scrub_text

        text = scrub_text(message)  # before any escape code, which could split a value
        if colour_wanted(sys.stderr):
            text = coloured(text)
        click.echo(text, err=True)


pass_app = click.make_pass_decorator(App)

wait_lock_option = click.option(
    "--wait-lock",
    "wait_lock",
    type=click.IntRange(min=1),
    is_flag=False,
    flag_value=600,  # chassis.engine.lease.DEFAULT_WAIT_LOCK_S (not imported: start-up)
    default=None,
    metavar="[SECONDS]",
    help="If another operation holds the lease, wait for it to finish (600 s, or "
    "--wait-lock=SECONDS) instead of exiting 7 at once.",
)
"""``--wait-lock[=SECONDS]`` of every command that takes an installation's lease."""


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """An RFC 3339 time with a zone (``2030-01-31T12:00:00Z``), in UTC."""
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"expected an RFC 3339 time such as 2030-01-31T12:00:00Z, not {value!r}"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone (end it with Z or +HH:MM)")
    return moment.astimezone(UTC)


at_option = click.option(
    "--at",
    "at",
    callback=_moment,
    default=None,
    metavar="TIME",
    help="Judge secret leases as of TIME (RFC 3339 with a zone, e.g. 2030-01-31T12:00:00Z) "
    "instead of now: which will have expired by then.",
)
"""``--at TIME`` of the commands that judge secret lease expiry."""


def _scrubbed_data(data: Any) -> Any:
    """``data`` with every string scrubbed (as ``chassis.engine.executor.scrubbed_data``,
    here so that printing JSON does not import the engine)."""
    from proofs.redaction import scrub_text

    if isinstance(data, str):
        return scrub_text(data)
    if isinstance(data, dict):
        return {k: _scrubbed_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_scrubbed_data(v) for v in data]
    return data


class ScrubbedStream(io.TextIOBase):
    """A text stream writing through to ``target`` with the command's resolved
    secret values (every encoding) replaced. Only values: patterns would
    mangle legitimate output, and notes and errors get them on their own.
    No ``buffer``: click then writes text here instead of going around it."""

    def __init__(self, target: TextIO) -> None:
        from proofs.redaction import scrub_values

        super().__init__()
        self.target = target
        self._scrub = scrub_values

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
        self.target.write(self._scrub(text))
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
    from proofs.redaction import MIN_WORD_CHARS, SECRET_VALUES, clear_secrets

    clear_secrets()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbedStream(saved[0]), ScrubbedStream(saved[1])
    try:
        with _signing_key_taken():
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


def _signing_key_taken() -> contextlib.AbstractContextManager[None]:
    """``CHASSIS_SIGNING_KEY``, when set, out of ``os.environ`` and scrubbed
    for the command (:func:`chassis.keyring.signing_key_taken`); the key
    modules are imported only then."""
    import os

    from chassis.config.env import EnvVars

    if EnvVars.SIGNING_KEY not in os.environ:
        return contextlib.nullcontext()
    from chassis.keyring import signing_key_taken

    return signing_key_taken()


def colour_wanted(stream: object) -> bool:
    """Whether to colour what goes to ``stream``: a terminal, and ``NO_COLOR``
    unset or empty."""
    if os.environ.get("NO_COLOR", ""):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # closed or detached
        return False


OUTCOME_COLOURS: dict[str, str] = {
    "ok": "green",
    "active and healthy": "green",
    "FAILED": "red",
    "failed at": "red",
    "NOT restored": "red",
    "restored": "yellow",
}
"""The colour of each outcome word in notes and in result columns."""

_OUTCOME_WORDS = re.compile(
    r"\bFAILED\b|\bfailed at\b|\bNOT restored\b|\brestored\b|\bactive and healthy\b"
    r"|(?<= )ok(?= \()"  # a step's "STEP ok (0.42s)"
)


def coloured(text: str) -> str:
    """``text`` with its outcome words styled (:data:`OUTCOME_COLOURS`)."""

    def style(found: re.Match[str]) -> str:
        word = found.group(0)
        return _styled(word, OUTCOME_COLOURS[word])

    return _OUTCOME_WORDS.sub(style, text)


def _styled(text: str, colour: str) -> str:
    """``text`` in ``colour`` (bold when red: a failure stands out)."""
    return click.style(text, fg=colour, bold=True if colour == "red" else None)


def outcome_colour(cell: str) -> str | None:
    """The colour of a result cell (``ok``, ``failed at …``, ``restored``), if any."""
    for word, colour in OUTCOME_COLOURS.items():
        if cell == word or cell.startswith(word + " "):
            return colour
    return None


def table(
    rows: list[list[str]],
    headers: list[str],
    *,
    colours: Mapping[int, Callable[[str], str | None]] | None = None,
) -> None:
    """Left-aligned columns, two spaces apart. ``colours``: column index ->
    the colour of a cell's text (None: plain), on a terminal only; the
    header row is never coloured, and widths are those of the plain text."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    styles = colours if colours and colour_wanted(sys.stdout) else {}
    for index, line in enumerate([headers, *rows]):
        cells = []
        for column, (cell, width) in enumerate(zip(line, widths, strict=True)):
            text = str(cell).ljust(width)
            colour = styles[column](str(cell)) if index and column in styles else None
            if colour is not None:
                shown = str(cell)
                text = _styled(shown, colour) + text[len(shown) :]
            cells.append(text)
        click.echo("  ".join(cells).rstrip())
