"""Fast verification (digests, links, Merkle root; no signatures) on real ledgers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import Ledger
from ledger.keys import KeyPair, generate_keypair
from ledger.records import parse_record, sealed_state
from ledger.storage import StorageConfig, open_ledger
from ledger.trust import Trust
from proofs.chain import (
    ChainFailure,
    LedgerVerificationError,
    StoredRow,
    VerifyReason,
    verify_ledger,
)
from proofs.fast import BATCH, fast_verify
from proofs.merkle import CompactRange, leaf_hash
from tests.notes import Notebook
from tests.proofs.test_chain_tamper import build
from tests.rawstore import RawStore, Row


def independent_root(rows: list[Row]) -> tuple[int, bytes]:
    """Size and root from the strict parser and the frontier class."""
    frontier = CompactRange()
    for row in rows:
        record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
        frontier.append(leaf_hash(record.digest))
    return frontier.size, frontier.root()


def fast_failure(rows: object) -> ChainFailure:
    with pytest.raises(LedgerVerificationError) as caught:
        fast_verify(rows)  # type: ignore[arg-type]
    return caught.value.failure


def full_failure(rows: object) -> ChainFailure:
    with pytest.raises(LedgerVerificationError) as caught:
        verify_ledger(rows)  # type: ignore[arg-type]
    return caught.value.failure


def as_tuples(rows: list[Row]) -> list[StoredRow]:
    return [(r.seq, r.originator_id, r.version, r.topic, r.state) for r in rows]


def test_untampered_ledger(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    rows = RawStore(ledger_url).rows()
    result = fast_verify(ledger.scan())
    assert (result.size, result.root) == independent_root(rows)
    assert result.last_seq == rows[-1].seq
    assert result.aggregates == 3 == verify_ledger(ledger.scan()).aggregates
    last_a = rows[5]
    assert result.heads[str(Notebook.id_for("a"))] == (
        5,
        parse_record(
            last_a.seq, last_a.originator_id, last_a.version, last_a.topic, last_a.state
        ).digest,
    )
    resumed = result.frontier.copy()
    assert resumed.root() == result.root


def test_empty_ledger() -> None:
    result = fast_verify([])
    assert (result.size, result.last_seq, result.aggregates) == (0, 0, 0)
    assert result.root == CompactRange().root()


def test_changed_payload(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    row = store.rows()[3]
    store.set_state(row.seq, row.state.replace(b"entry 1", b"entry X"))
    failure = fast_failure(ledger.scan())
    assert failure.reason is VerifyReason.DIGEST_MISMATCH
    assert failure == full_failure(ledger.scan())


def test_deleted_record(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    rows = store.rows()
    store.delete(rows[2].seq)
    failure = fast_failure(ledger.scan())
    assert failure.reason is VerifyReason.MISSING_VERSION
    assert (failure.seq, failure.version) == (rows[3].seq, 3)
    assert failure == full_failure(ledger.scan())


def test_swapped_versions(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    rows = store.rows()
    store.swap_versions(rows[2].seq, rows[3].seq)
    failure = fast_failure(ledger.scan())
    assert failure.reason is VerifyReason.VERSION_MISMATCH
    assert failure == full_failure(ledger.scan())


def test_reordered_records_of_one_aggregate_break_the_chain(
    ledger: Ledger, ledger_url: str, root_key: KeyPair
) -> None:
    build(ledger, root_key)
    rows = as_tuples(RawStore(ledger_url).rows())
    rows[2], rows[3] = rows[3], rows[2]
    failure = fast_failure(rows)
    assert failure.reason is VerifyReason.MISSING_VERSION
    assert failure == full_failure(rows)


def test_reordered_records_of_two_aggregates_change_the_root(
    ledger: Ledger, ledger_url: str, root_key: KeyPair
) -> None:
    """Every chain survives moving 'b' before the end of 'a': only the
    Merkle root (compared with a checkpoint) shows that history was reordered."""
    build(ledger, root_key)
    rows = as_tuples(RawStore(ledger_url).rows())
    before = fast_verify(rows)
    rows[5], rows[6] = rows[6], rows[5]
    after = fast_verify(rows)
    assert after.size == before.size
    assert after.root != before.root


def test_truncated_tail_changes_the_root(
    ledger: Ledger, ledger_url: str, root_key: KeyPair
) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    before = fast_verify(ledger.scan())
    store.delete(store.rows()[-1].seq)
    after = fast_verify(ledger.scan())
    assert (after.size, after.root) != (before.size, before.root)


def test_malformed_records_agree_with_full_verification(
    ledger: Ledger, ledger_url: str, root_key: KeyPair
) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    row = store.rows()[4]
    record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
    digest_hex = record.digest.hex().encode()
    for state in (
        row.state.replace(b'{"digest"', b'{ "digest"'),
        row.state.replace(digest_hex, digest_hex.upper()),
        row.state[:-1],
        b"not json",
        row.state.replace(b'"version":', b'"version":"'),
    ):
        store.set_state(row.seq, state)
        failure = fast_failure(ledger.scan())
        assert failure.reason is VerifyReason.MALFORMED_RECORD, state
        assert failure == full_failure(ledger.scan())


def test_topic_column_changed(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    build(ledger, root_key)
    store = RawStore(ledger_url)
    row = store.rows()[4]
    store.set_topic(row.seq, "test.notebook.opened.v1")
    failure = fast_failure(ledger.scan())
    assert failure.reason is VerifyReason.RECORD_MISMATCH
    assert failure == full_failure(ledger.scan())


def test_signatures_are_not_checked(ledger: Ledger, ledger_url: str, root_key: KeyPair) -> None:
    """What --fast leaves out, on purpose: the signature bytes."""
    build(ledger, root_key)
    store = RawStore(ledger_url)
    row = store.rows()[-1]
    record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
    bad = bytes([record.signature[0] ^ 1]) + record.signature[1:]
    store.set_state(row.seq, sealed_state(record.digest, record.body_bytes, bad))
    assert fast_verify(ledger.scan()).size == len(store.rows())
    assert full_failure(ledger.scan()).reason is VerifyReason.BAD_SIGNATURE


def test_failures_past_the_first_batch(tmp_path: object, root_key: KeyPair) -> None:
    """A ledger of several batches: the root still matches and a failure deep
    inside a batch is named by its own sequence number."""
    url = f"sqlite:///{tmp_path}/big.db"
    big = open_ledger(StorageConfig.from_url(url), root_key, create=True)
    big.append(
        Trust.establish(
            keyid=root_key.keyid, name="root", public_key=root_key.public_key, ledger_name="big"
        )
    )
    books = [Notebook.open(name, keyid=root_key.keyid) for name in ("x", "y", "z")]
    for i in range(2 * BATCH + 300):
        books[i % 3].note(str(i), keyid=root_key.keyid)
    for book in books:
        big.save(book)
    rows = RawStore(url).rows()
    assert len(rows) > 2 * BATCH
    result = fast_verify(big.scan())
    assert (result.size, result.root) == independent_root(rows)
    target = rows[BATCH + 17]
    tuples = as_tuples(rows)
    tuples[BATCH + 17] = (*tuples[BATCH + 17][:4], target.state.replace(b'"text":"', b'"text":"!'))
    failure = fast_failure(tuples)
    assert (failure.reason, failure.seq) == (VerifyReason.DIGEST_MISMATCH, target.seq)
    assert failure == full_failure(tuples)
    big.close()


def test_a_body_that_is_two_objects_is_refused(
    ledger: Ledger, ledger_url: str, root_key: KeyPair
) -> None:
    """Batches are decoded as one JSON array: a record smuggling a comma must not
    shift its neighbours."""
    build(ledger, root_key)
    rows = as_tuples(RawStore(ledger_url).rows())
    seq, originator, version, topic, state = rows[3]
    body = state[85:-98]
    rows[3] = (seq, originator, version, topic, state[:85] + body + b",{}" + state[-98:])
    failure = fast_failure(rows)
    assert failure.reason is VerifyReason.MALFORMED_RECORD
    assert failure == full_failure(rows)


@pytest.fixture(scope="module")
def small_rows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[StoredRow]]:
    directory = tmp_path_factory.mktemp("fast")
    key = generate_keypair(directory / "keys", "root")
    url = f"sqlite:///{directory / 'ledger.db'}"
    small = open_ledger(StorageConfig.from_url(url), key, create=True)
    small.append(
        Trust.establish(keyid=key.keyid, name="root", public_key=key.public_key, ledger_name="p")
    )
    build(small, key)
    small.close()
    yield as_tuples(RawStore(url).rows())


SIG_CONTENT = 90
"""The signature's 88 base64 characters and closing quote start this far from the end."""


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_outside_the_signature_is_detected(
    small_rows: list[StoredRow], data: st.DataObject
) -> None:
    """Fast verification fails exactly as full verification does, or the
    change was in the signature field, which only full verification reads."""
    rows = list(small_rows)
    at = data.draw(st.integers(0, len(rows) - 1))
    seq, originator, version, topic, state = rows[at]
    offset = data.draw(st.integers(0, len(state) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != state[offset]))
    rows[at] = (
        seq,
        originator,
        version,
        topic,
        state[:offset] + bytes([value]) + state[offset + 1 :],
    )
    full = full_failure(rows)
    try:
        fast_verify(rows)
    except LedgerVerificationError as e:
        assert e.failure == full
    else:
        assert len(state) - SIG_CONTENT <= offset < len(state) - 2
        assert full.reason in (VerifyReason.BAD_SIGNATURE, VerifyReason.MALFORMED_RECORD)


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.sampled_from([1, 2, 3, 4, 8, 16, 5, 64]), max_size=20))
def test_batched_frontier_equals_compact_range(chunks: list[int]) -> None:
    """Whole aligned subtrees joined at once give the same frontier as leaf by leaf."""
    from proofs.fast import append_leaves

    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(sum(chunks))]
    stack: list[bytes] = []
    size = start = 0
    for count in chunks:
        size = append_leaves(stack, size, leaves[start : start + count])
        start += count
    expected = CompactRange()
    expected.extend(leaves)
    assert CompactRange(size, stack) == expected
