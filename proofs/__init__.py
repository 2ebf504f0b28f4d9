"""Verification of the ledger by anyone holding it: hash chains and
signatures now; Merkle checkpoints, proofs and receipts build on this.

Every verifier here returns a result only when everything checked out, and
otherwise raises an error naming the failed step and where (fail closed).
"""

from proofs.chain import (
    ChainFailure,
    LedgerVerificationError,
    VerifiedLedger,
    VerifyReason,
    verify_ledger,
)

__all__ = [
    "ChainFailure",
    "LedgerVerificationError",
    "VerifiedLedger",
    "VerifyReason",
    "verify_ledger",
]
