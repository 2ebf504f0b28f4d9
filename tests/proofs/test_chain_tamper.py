"""Tampering with stored rows by direct SQL is detected, with reason and place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import Ledger
from ledger.canonical import event_digest
from ledger.keys import KeyPair, generate_keypair
from ledger.records import parse_record, sealed_state
from ledger.trust import Trust
from proofs.chain import LedgerVerificationError, VerifyReason, verify_ledger
from tests.notes import Notebook
from tests.rawstore import RawStore, Row


def build(ledger: Ledger, key: KeyPair) -> None:
    """seq 1 trust, seq 2-6 notebook 'a' v1-5, seq 7 notebook 'b' v1."""
    book = Notebook.open("a", keyid=key.keyid)
    ledger.append(book)
    for i in range(4):
        book.note(f"entry {i}", keyid=key.keyid)
        ledger.append(book)
    ledger.append(Notebook.open("b", keyid=key.keyid))


def failure_of(ledger: Ledger, root: KeyPair) -> LedgerVerificationError:
    with pytest.raises(LedgerVerificationError) as caught:
        verify_ledger(ledger.scan(), pinned_root=root.keyid)
    return caught.value


def reseal(row: Row, key: KeyPair, **changes: object) -> bytes:
    """Rewrite a record's body and seal it again with ``key``."""
    record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
    body = json.loads(record.body_bytes)
    body.update(changes)
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = event_digest(raw)
    return sealed_state(digest, raw, key.sign(digest))


def test_untampered_ledger_verifies(ledger: Ledger, root_key: KeyPair) -> None:
    build(ledger, root_key)
    result = verify_ledger(ledger.scan(), pinned_root=root_key.keyid)
    assert (result.events, result.aggregates, result.root_keyid) == (7, 3, root_key.keyid)


def test_one_payload_byte_changed(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    row = store.rows()[3]
    store.set_state(row.seq, row.state.replace(b"entry 1", b"entry X"))
    failure = failure_of(ledger, root_key).failure
    assert failure.reason is VerifyReason.DIGEST_MISMATCH
    assert (failure.seq, failure.version) == (row.seq, 3)
    assert failure.aggregate == str(Notebook.id_for("a"))


def test_event_deleted_from_the_middle(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    rows = store.rows()
    store.delete(rows[2].seq)  # notebook a, version 2
    failure = failure_of(ledger, root_key).failure
    assert failure.reason is VerifyReason.MISSING_VERSION
    assert (failure.seq, failure.version) == (rows[3].seq, 3)
    assert "expected 2" in failure.detail


def test_two_versions_swapped(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    rows = store.rows()
    store.swap_versions(rows[2].seq, rows[3].seq)
    failure = failure_of(ledger, root_key).failure
    assert failure.reason is VerifyReason.VERSION_MISMATCH
    assert failure.seq == rows[2].seq
    assert "signed as version 2" in failure.detail


def test_event_resigned_with_untrusted_key(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: Path
) -> None:
    build(ledger, root_key)
    mallory = generate_keypair(isolation, "mallory")
    store = RawStore(ledger_url)
    row = store.rows()[-1]
    store.set_state(row.seq, reseal(row, mallory, keyid=mallory.keyid))
    failure = failure_of(ledger, root_key).failure
    assert failure.reason is VerifyReason.UNKNOWN_KEY
    assert (failure.seq, failure.aggregate) == (row.seq, str(Notebook.id_for("b")))


def test_event_resigned_under_the_trusted_key_id(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: Path
) -> None:
    build(ledger, root_key)
    mallory = generate_keypair(isolation, "mallory")
    store = RawStore(ledger_url)
    row = store.rows()[-1]
    store.set_state(row.seq, reseal(row, mallory))  # still claims root's key id
    failure = failure_of(ledger, root_key).failure
    assert failure.reason is VerifyReason.BAD_SIGNATURE
    assert failure.seq == row.seq


def test_prev_rewritten_with_recomputed_digests_but_original_signatures(
    ledger: Ledger, ledger_url: str, root_key: KeyPair
) -> None:
    """Drop version 3 of notebook a and re-link 4 and 5 over the gap: every
    digest and link is consistent again, only the signatures can tell."""
    build(ledger, root_key)
    store = RawStore(ledger_url)
    rows = store.rows()
    v2, v3, v4, v5 = rows[2], rows[3], rows[4], rows[5]
    store.delete(v3.seq)
    prev = parse_record(v2.seq, v2.originator_id, v2.version, v2.topic, v2.state).digest
    for row, new_version in ((v4, 3), (v5, 4)):
        record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
        body = json.loads(record.body_bytes)
        body.update(prev=prev.hex(), version=new_version)
        raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        prev = event_digest(raw)
        store.set_state(row.seq, sealed_state(prev, raw, record.signature))
    store.set_version(v4.seq, 3)  # renumber the columns to match
    store.set_version(v5.seq, 4)
    failure = failure_of(ledger, root_key).failure
    assert failure.reason is VerifyReason.BAD_SIGNATURE
    assert (failure.seq, failure.version) == (v4.seq, 3)


def test_event_signed_after_the_key_was_revoked(
    ledger: Ledger, root_key: KeyPair, isolation: Path, ledger_url: str
) -> None:
    from ledger.storage import StorageConfig, open_ledger

    build(ledger, root_key)
    ops = generate_keypair(isolation, "ops")
    ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.trust_key(
            actor=root_key.keyid, name="ops", public_key=ops.public_key, roles=["operator"]
        ),
    )
    ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.revoke_key(actor=root_key.keyid, keyid=ops.keyid, reason="left"),
    )
    as_ops = open_ledger(StorageConfig.from_url(ledger_url), ops)
    book = as_ops.load(Notebook, Notebook.id_for("b"))
    book.note("written after revocation", keyid=ops.keyid)
    as_ops.save(book)  # Application.save: skips the write-time trust check, as a rogue client would
    as_ops.close()
    failure = failure_of(ledger, root_key).failure
    assert failure.reason is VerifyReason.REVOKED_KEY
    assert (failure.aggregate, failure.version) == (str(Notebook.id_for("b")), 2)


def test_role_not_allowed(
    ledger: Ledger, root_key: KeyPair, isolation: Path, ledger_url: str
) -> None:
    from ledger.storage import StorageConfig, open_ledger

    cp = generate_keypair(isolation, "cp")
    ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.trust_key(
            actor=root_key.keyid, name="cp", public_key=cp.public_key, roles=["checkpoint"]
        ),
    )
    rogue = open_ledger(StorageConfig.from_url(ledger_url), cp)
    rogue.save(Notebook.open("by-cp", keyid=cp.keyid))
    rogue.close()
    failure = failure_of(ledger, root_key).failure
    assert failure.reason is VerifyReason.ROLE_NOT_ALLOWED
    assert failure.seq == 3


def test_a_different_root_of_trust_is_detected(
    ledger: Ledger, root_key: KeyPair, isolation: Path
) -> None:
    other = generate_keypair(isolation, "other")
    with pytest.raises(LedgerVerificationError) as caught:
        verify_ledger(ledger.scan(), pinned_root=other.keyid)
    assert caught.value.failure.reason is VerifyReason.ROOT_MISMATCH


def test_topic_column_changed(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    row = store.rows()[4]
    store.set_topic(row.seq, "test.notebook.opened.v1")
    assert failure_of(ledger, root_key).failure.reason is VerifyReason.RECORD_MISMATCH


def test_signatures_checked_in_parallel_report_the_first_bad_one(
    tmp_path: Path, root_key: KeyPair
) -> None:
    """Large enough for worker processes; two bad signatures, the lower is named."""
    from ledger.storage import StorageConfig, open_ledger

    url = f"sqlite:///{tmp_path / 'big.db'}"
    big = open_ledger(StorageConfig.from_url(url), root_key, create=True)
    big.append(
        Trust.establish(
            keyid=root_key.keyid, name="root", public_key=root_key.public_key, ledger_name="big"
        )
    )
    book = Notebook.open("big", keyid=root_key.keyid)
    for i in range(5000):
        book.note(str(i), keyid=root_key.keyid)
        if i % 500 == 499:
            big.save(book)  # batches; snapshots not needed here
    big.save(book)
    assert verify_ledger(big.scan(), workers=2).workers == 2
    store = RawStore(url)
    rows = store.rows()
    for index in (4321, 2345):
        row = rows[index]
        record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
        bad = bytes([record.signature[0] ^ 1]) + record.signature[1:]
        store.set_state(row.seq, sealed_state(record.digest, record.body_bytes, bad))
    with pytest.raises(LedgerVerificationError) as caught:
        verify_ledger(big.scan(), workers=2)
    assert caught.value.failure.reason is VerifyReason.BAD_SIGNATURE
    assert caught.value.failure.seq == rows[2345].seq
    big.close()


@pytest.fixture(scope="module")
def small_ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, KeyPair]:
    from ledger.storage import StorageConfig, open_ledger

    directory = tmp_path_factory.mktemp("prop")
    key = generate_keypair(directory / "keys", "root")
    url = f"sqlite:///{directory / 'ledger.db'}"
    small = open_ledger(StorageConfig.from_url(url), key, create=True)
    small.append(
        Trust.establish(keyid=key.keyid, name="root", public_key=key.public_key, ledger_name="p")
    )
    build(small, key)
    small.close()
    return url, key


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_is_detected(
    small_ledger: tuple[str, KeyPair], data: st.DataObject
) -> None:
    from ledger.storage import StorageConfig, open_ledger

    url, key = small_ledger
    store = RawStore(url)
    rows = store.rows()
    row = data.draw(st.sampled_from(rows))
    column = data.draw(st.sampled_from(["state", "topic"]))
    original = row.state if column == "state" else row.topic.encode()
    offset = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != original[offset]))
    changed = original[:offset] + bytes([value]) + original[offset + 1 :]
    if column == "state":
        store.set_state(row.seq, changed)
    else:
        store.set_topic(row.seq, changed.decode("utf-8", errors="replace"))
    reader = open_ledger(StorageConfig.from_url(url), None)
    try:
        with pytest.raises(LedgerVerificationError):
            verify_ledger(reader.scan(), pinned_root=key.keyid)
    finally:
        reader.close()
        store.set_state(row.seq, row.state)
        store.set_topic(row.seq, row.topic)
