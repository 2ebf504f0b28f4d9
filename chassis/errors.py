"""Errors of the application layer. Each has an ``exit_code``; the table of
codes is in ``guides/operations.md`` and in :data:`EXIT_CODES`.
"""

from __future__ import annotations

EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: please report it)",
    2: "usage error (bad option or argument)",
    3: "workspace or configuration error",
    4: "ledger storage error (wrong file, unreachable database)",
    5: "key error (missing, malformed or exposed key file; unknown key)",
    6: "not authorised (key untrusted, revoked, or lacks the role)",
    7: "conflict (another writer changed the same thing first; nothing written)",
    8: "verification failed (tampering or corruption detected)",
    9: "refused by a rule of the ledger (e.g. key already trusted)",
    10: "not found (no such aggregate in the ledger)",
    11: "host unreachable or its probe failed (address and cause named)",
    12: "placement impossible (group, short resource and best host named)",
    13: "hardware admission rejected (reason codes given)",
    14: "doctor found a failing check",
    15: "a supervisor could not start or stop a process",
    16: "deploy failed; the previous release was restored",
    17: "recover could not restore a host; the lease stays held",
    18: "reconcile found drift (differences listed)",
    19: "export could not be delivered (items stay queued)",
    20: "evolution: a required gate failed; the candidate was not promoted",
}


class ChassisError(Exception):
    """Root of application errors."""

    exit_code = 1

    def diagnostics(self) -> str:
        return str(self)


class WorkspaceError(ChassisError):
    """No workspace here, or its files are malformed."""

    exit_code = 3


class NotFound(ChassisError):
    """No such app, installation or host (exit 10)."""

    exit_code = 10
