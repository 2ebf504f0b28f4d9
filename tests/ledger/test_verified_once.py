"""Each exact (key, signature, message) is verified once per process
(:mod:`ledger.verified`): a ledger opened again, or verified again, checks
no signature it has seen pass, and any changed byte is checked afresh."""

from __future__ import annotations

from pathlib import Path

import nacl.signing
import pytest

from ledger import verified
from ledger.application import Ledger
from ledger.keys import KeyPair, generate_keypair, verify_signature
from ledger.storage import StorageConfig, open_ledger
from proofs.chain import verify_ledger
from tests.notes import Notebook


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The messages libsodium is asked to check, from now on (a fresh memory)."""
    verified.forget()
    seen: list[bytes] = []
    real = nacl.signing.VerifyKey.verify

    def counting(key: nacl.signing.VerifyKey, message: bytes, signature: bytes) -> bytes:
        seen.append(message)
        return real(key, message, signature)

    monkeypatch.setattr(nacl.signing.VerifyKey, "verify", counting)
    return seen


def test_a_triple_that_verified_is_not_checked_again_and_a_changed_one_is(
    checks: list[bytes], isolation: Path
) -> None:
    key = generate_keypair(isolation, "k")
    signature = key.sign(b"message")
    assert verified.verifies(key.public_key, signature, b"message")
    assert verified.verifies(key.public_key, signature, b"message")
    assert checks == [b"message"]
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    for _ in range(2):  # a failure is never remembered
        assert not verified.verifies(key.public_key, forged, b"message")
        assert not verified.verifies(key.public_key, signature, b"messagE")
    other = generate_keypair(isolation, "other")
    assert not verified.verifies(other.public_key, signature, b"message")
    assert len(checks) == 6
    verified.forget()
    assert verified.verifies(key.public_key, signature, b"message")
    assert len(checks) == 7
    assert not verify_signature(key.public_key[:31], signature, b"message")  # wrong size


def test_a_ledger_read_twice_in_one_process_checks_each_signature_once(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, checks: list[bytes]
) -> None:
    writer = ledger  # trust rooted in root_key
    book = Notebook.open("a", keyid=root_key.keyid)
    writer.append(book)
    for i in range(5):
        book.note(f"entry {i}", keyid=root_key.keyid)
        writer.append(book)
    verified.forget()  # as a new process: nothing remembered
    del checks[:]

    config = StorageConfig.from_url(ledger_url)
    first = open_ledger(config, root_key)
    verify_ledger(first.scan())
    once = len(checks)
    assert once >= 6  # every record of the notebook, and trust's
    first.close()
    again = open_ledger(config, root_key)
    verify_ledger(again.scan())
    assert [e.originator_version for _, e in again.verified_events(book.id)] == list(range(1, 7))
    again.close()
    assert len(checks) == once
