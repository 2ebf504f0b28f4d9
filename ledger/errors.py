"""Typed ledger errors.

Each carries an ``exit_code`` so the CLI boundary can map it without
string matching (see ``guides/operations.md`` for the table).
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error raised by the ledger package."""

    exit_code = 1

    def diagnostics(self) -> str:
        """One line for an operator: what failed and where."""
        return str(self)


class StorageError(LedgerError):
    """The ledger store cannot be opened or used (wrong file, unreachable server)."""

    exit_code = 4


class LedgerURLError(StorageError):
    """The ledger URL itself is malformed or incomplete: a configuration error
    (exit 3), found before any connection is made."""

    exit_code = 3


class KeyFileError(LedgerError):
    """A key file is missing, malformed or too widely readable."""

    exit_code = 5


class UnknownKeyError(LedgerError, LookupError):
    """A key id or name that neither the ledger nor the key directory knows."""

    exit_code = 5


class NotFoundError(LedgerError, LookupError):
    """No aggregate with that id (or not of the expected kind)."""

    exit_code = 10


class NotAuthorisedError(LedgerError, PermissionError):
    """The acting key may not append this event (untrusted, revoked, wrong role)."""

    exit_code = 6

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConflictError(LedgerError):
    """Another writer appended to the same aggregate first; nothing was written."""

    exit_code = 7


class DomainRuleError(LedgerError, ValueError):
    """A command that the aggregate's current state does not allow."""

    exit_code = 9


class ChainBreakError(LedgerError):
    """A loaded event does not link to its predecessor's digest."""

    exit_code = 8


class SigningError(LedgerError):
    """An event cannot be sealed (no signer, or attributed to another key)."""

    exit_code = 5
