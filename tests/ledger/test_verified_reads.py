"""Nothing acts on unverified bytes (issue 10): the attacks of an adversary who
can write the database, and of a trusted key that signs records breaking the
format, against both full verification and the application's own reads.

Each attack must be rejected by ``verify_ledger`` with its named reason *and*
by the application's read path (the mapper), never read two ways.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest

from ledger.aggregate import LedgerSnapshot
from ledger.application import Ledger
from ledger.canonical import event_digest
from ledger.checks import RecordRejected, VerifyReason
from ledger.errors import NotAuthorisedError
from ledger.keys import KeyPair, generate_keypair
from ledger.records import parse_record, sealed_state
from ledger.snapshots import restore_bound
from ledger.trust import Trust
from proofs.chain import LedgerVerificationError, verify_ledger
from tests.notes import Notebook
from tests.rawstore import RawStore, Row


def _notebook(ledger: Ledger, key: KeyPair, name: str = "a", notes: int = 3) -> Notebook:
    book = Notebook.open(name, keyid=key.keyid)
    ledger.append(book)
    for i in range(notes):
        book.note(f"entry {i}", keyid=key.keyid)
        ledger.append(book)
    return book


def _resign(row: Row, key: KeyPair, body: bytes) -> bytes:
    """``body`` sealed under ``key``: a record the key holder really signed."""
    digest = event_digest(body)
    return sealed_state(digest, body, key.sign(digest))


def _body(row: Row) -> dict[str, Any]:
    record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
    parsed: dict[str, Any] = json.loads(record.body_bytes)
    return parsed


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _reason_of_verify(ledger: Ledger, root: KeyPair) -> VerifyReason:
    with pytest.raises(LedgerVerificationError) as caught:
        verify_ledger(ledger.scan(), pinned_root=root.keyid)
    return caught.value.failure.reason


def _reason_of_read(read: Callable[[], object]) -> VerifyReason:
    with pytest.raises(RecordRejected) as caught:
        read()
    return caught.value.reason


def _set_column(ledger_url: str, seq: int, column: str, value: object) -> None:
    store = RawStore(ledger_url)
    with store._cursor() as c:
        sql = f"UPDATE {store._table} SET {column}=? WHERE {store._seq}=?"
        c.execute(store._p(sql), (value, seq))


# Key-signed records that break the format: a trusted key signed them, so only
# the format rules can refuse them, and the application must refuse them too.

def _whitespace(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(", ", ": ")).encode()


def _member_order(body: dict[str, Any]) -> bytes:
    return json.dumps(dict(reversed(list(body.items()))), separators=(",", ":")).encode()


def _escaped_letter(body: dict[str, Any]) -> bytes:
    return _encode(body).replace(b'"entry 2"', b'"\\u0065ntry 2"')


def _duplicate_member(body: dict[str, Any]) -> bytes:
    # Two parsers may keep either value of a duplicated member.
    (name,) = body["payload"]
    return _encode(body).replace(b'"entry 2"}', b'"entry 2","%s":"evil"}' % name.encode())


def _float(body: dict[str, Any]) -> bytes:
    return _encode(body).replace(b'"entry 2"', b"2.5")


def _huge_integer(body: dict[str, Any]) -> bytes:
    return _encode(body).replace(b'"entry 2"', str(2**63).encode())


def _timestamp(body: dict[str, Any]) -> bytes:
    return _encode({**body, "timestamp": body["timestamp"].replace("Z", "+00:00")})


def _extra_member(body: dict[str, Any]) -> bytes:
    return _encode({**body, "payload": {**body["payload"], "admin": True}})


def _upper_hex_prev(body: dict[str, Any]) -> bytes:
    return _encode({**body, "prev": body["prev"].upper()})


VIOLATIONS: dict[str, tuple[Callable[[dict[str, Any]], bytes], VerifyReason]] = {
    "whitespace": (_whitespace, VerifyReason.NON_CANONICAL),
    "member-order": (_member_order, VerifyReason.NON_CANONICAL),
    "escaped-letter": (_escaped_letter, VerifyReason.NON_CANONICAL),
    "duplicate-member": (_duplicate_member, VerifyReason.NON_CANONICAL),
    "float": (_float, VerifyReason.BAD_NUMBER),
    "integer-over-63-bits": (_huge_integer, VerifyReason.BAD_NUMBER),
    "timestamp-offset": (_timestamp, VerifyReason.BAD_TIMESTAMP),
    "member-outside-schema": (_extra_member, VerifyReason.BAD_PAYLOAD),
    "upper-case-prev": (_upper_hex_prev, VerifyReason.MALFORMED_RECORD),
}


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_key_signed_format_violation_is_refused_by_verify_and_by_reads(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, violation: str
) -> None:
    _notebook(ledger, root_key)
    make, reason = VIOLATIONS[violation]
    row = RawStore(ledger_url).rows()[-1]  # notebook a, "entry 2"
    RawStore(ledger_url).set_state(row.seq, _resign(row, root_key, make(_body(row))))
    assert _reason_of_verify(ledger, root_key) is reason
    assert _reason_of_read(lambda: ledger.load(Notebook, Notebook.id_for("a"))) is reason


def _trust_mallory(ledger: Ledger, root: KeyPair, keys: Path, name: str = "mallory") -> KeyPair:
    key = generate_keypair(keys, name)

    def command(trust: Trust) -> None:
        trust.trust_key(actor=root.keyid, name=name, public_key=key.public_key, roles=["operator"])

    ledger.update(Trust, Trust.ID, command)
    return key


def test_trust_record_with_an_unknown_role(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: Path
) -> None:
    _trust_mallory(ledger, root_key, isolation)
    row = RawStore(ledger_url).rows()[-1]
    body = _body(row)
    body["payload"]["roles"] = ["superuser"]
    RawStore(ledger_url).set_state(row.seq, _resign(row, root_key, _encode(body)))
    assert _reason_of_verify(ledger, root_key) is VerifyReason.UNKNOWN_ROLE
    assert _reason_of_read(ledger.verified_trust) is VerifyReason.UNKNOWN_ROLE


def test_retrusting_a_revoked_key(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: Path
) -> None:
    mallory = _trust_mallory(ledger, root_key, isolation)
    ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.revoke_key(actor=root_key.keyid, keyid=mallory.keyid, reason="lost laptop"),
    )
    with pytest.raises(Exception, match="already revoked"):  # refused at write time
        _trust_mallory_again(ledger, root_key, mallory)
    _trust_mallory(ledger, root_key, isolation, name="carol")
    row = RawStore(ledger_url).rows()[-1]
    body = _body(row)
    body["payload"].update(
        trusted_keyid=mallory.keyid, public_key=mallory.public_key.hex(), name="mallory"
    )
    RawStore(ledger_url).set_state(row.seq, _resign(row, root_key, _encode(body)))
    assert _reason_of_verify(ledger, root_key) is VerifyReason.KEY_RETRUSTED
    assert _reason_of_read(ledger.verified_trust) is VerifyReason.KEY_RETRUSTED


def _trust_mallory_again(ledger: Ledger, root: KeyPair, key: KeyPair) -> None:
    ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.trust_key(
            actor=root.keyid, name="mallory2", public_key=key.public_key, roles=["operator"]
        ),
    )


def test_trust_record_outside_the_trust_aggregate(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: Path
) -> None:
    """A key trusted by a record in another aggregate: 'key revoke' could not
    find it, so it must count for nothing, and reads must not ignore it."""
    _trust_mallory(ledger, root_key, isolation)
    row = RawStore(ledger_url).rows()[-1]
    elsewhere = UUID("00000000-0000-5000-8000-000000000001")
    body = {**_body(row), "id": str(elsewhere), "version": 1, "prev": "0" * 64}
    RawStore(ledger_url).set_state(row.seq, _resign(row, root_key, _encode(body)))
    stored = elsewhere.hex if ledger.config.kind == "sqlite" else elsewhere
    _set_column(ledger_url, row.seq, "originator_id", stored)
    _set_column(ledger_url, row.seq, "originator_version", 1)
    assert _reason_of_verify(ledger, root_key) is VerifyReason.WRONG_AGGREGATE
    assert _reason_of_read(ledger.verified_trust) is VerifyReason.WRONG_AGGREGATE


def test_a_second_root_of_trust(ledger: Ledger, root_key: KeyPair, isolation: Path) -> None:
    other = generate_keypair(isolation, "other-root")
    genesis = Trust.establish(
        keyid=other.keyid, name="other", public_key=other.public_key, ledger_name="x"
    )
    genesis.id = UUID("00000000-0000-5000-8000-000000000002")
    event = genesis.pending_events[0]
    forged = msgspec.structs.replace(event, originator_id=genesis.id)
    body = forged.canonical()
    digest = event_digest(body)
    state = sealed_state(digest, body, other.sign(digest))
    ledger.recorder.insert_events([_stored(forged.originator_id, forged.TOPIC, state)])
    assert _reason_of_verify(ledger, root_key) is VerifyReason.SECOND_GENESIS
    assert _reason_of_read(ledger.verified_trust) is VerifyReason.SECOND_GENESIS


def _stored(originator_id: UUID, topic: str, state: bytes) -> Any:
    from eventsourcing.persistence import StoredEvent

    return StoredEvent(originator_id=originator_id, originator_version=1, topic=topic, state=state)


def test_no_root_of_trust(ledger_url: str, root_key: KeyPair) -> None:
    from ledger.storage import StorageConfig, open_ledger

    ledger = open_ledger(StorageConfig.from_url(ledger_url), root_key, create=True)
    try:
        book = Notebook.open("a", keyid=root_key.keyid)
        event = book.pending_events[0]
        body = event.canonical()
        digest = event_digest(body)
        ledger.recorder.insert_events(
            [_stored(book.id, event.TOPIC, sealed_state(digest, body, root_key.sign(digest)))]
        )
        assert _reason_of_verify(ledger, root_key) is VerifyReason.NO_GENESIS
        assert _reason_of_read(lambda: ledger.load(Notebook, book.id)) is VerifyReason.NO_GENESIS
    finally:
        ledger.close()


# Attacks with database access and no key.

def test_trust_snapshot_is_never_loaded(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: Path
) -> None:
    """A planted snapshot of the trust aggregate naming an attacker key as
    admin changes nothing: trust is always folded from its signed events."""
    mallory = generate_keypair(isolation, "mallory")
    trust = ledger.load(Trust, Trust.ID)
    state = dict(LedgerSnapshot.take(trust).state)
    state["keys"] = {
        **state["keys"],
        mallory.keyid: {
            "keyid": mallory.keyid,
            "name": "mallory",
            "public_key": mallory.public_key.hex(),
            "roles": ["admin", "operator"],
            "trusted_at": state["keys"][root_key.keyid]["trusted_at"],
        },
    }
    snapshot = LedgerSnapshot(
        originator_id=Trust.ID,
        originator_version=trust.version,
        timestamp=trust.modified_on,
        kind="trust",
        state=state,
    )
    assert ledger.snapshots is not None
    ledger.snapshots.put([snapshot])
    assert mallory.keyid not in ledger.load(Trust, Trust.ID).keys
    fold = ledger.verified_trust()
    assert mallory.keyid not in fold.keys
    with pytest.raises(NotAuthorisedError, match="not trusted"):
        fold.authorise(mallory.keyid, "admin")


def test_tampered_snapshot_is_ignored_and_state_replayed(
    ledger: Ledger, root_key: KeyPair
) -> None:
    book = _notebook(ledger, root_key, notes=12)  # crosses 10: a bound snapshot
    assert ledger.snapshots is not None
    (snapshot,) = ledger.snapshots.get(book.id, desc=True, limit=1)
    assert isinstance(snapshot, LedgerSnapshot)
    events = [e for _, e in ledger.verified_events(book.id, gt=snapshot.originator_version - 2)]
    events = events[:2]
    assert restore_bound(snapshot, events, None) is not None  # the honest one is used
    honest = ledger.load(Notebook, book.id)
    state = {**snapshot.state, "lines": ["rm -rf / --no-preserve-root"]}
    forged = msgspec.structs.replace(snapshot, state=state)
    assert restore_bound(forged, events, None) is None
    ledger.snapshots.put([msgspec.structs.replace(forged, originator_version=honest.version)])
    loaded = ledger.load(Notebook, book.id)
    assert loaded.lines == honest.lines and "rm -rf / --no-preserve-root" not in loaded.lines
    for version in range(1, honest.version + 1):
        past = ledger.load(Notebook, book.id, version=version)
        assert past.version == version


def test_aggregate_id_case_change_is_caught_by_verify_and_reads(
    tmp_path: Path, root_key: KeyPair, isolation: Path
) -> None:
    """SQLite compares ids as text: an upper-cased id hid a KeyRevoked from
    the application while verify read it as the same aggregate. (PostgreSQL
    stores ids as ``uuid``, which has no second spelling.)"""
    from ledger.storage import StorageConfig, open_ledger

    url = f"sqlite:///{tmp_path / 'case.db'}"
    ledger = open_ledger(StorageConfig.from_url(url), root_key, create=True)
    try:
        ledger.append(
            Trust.establish(
                keyid=root_key.keyid, name="root", public_key=root_key.public_key, ledger_name="t"
            )
        )
        mallory = _trust_mallory(ledger, root_key, isolation)
        ledger.update(
            Trust,
            Trust.ID,
            lambda t: t.revoke_key(actor=root_key.keyid, keyid=mallory.keyid, reason="stolen"),
        )
        row = RawStore(url).rows()[-1]
        assert row.topic == Trust.KeyRevoked.TOPIC
        with sqlite3.connect(tmp_path / "case.db") as conn:
            conn.execute(
                "UPDATE stored_events SET originator_id=? WHERE rowid=?",
                (row.originator_id.upper(), row.seq),
            )
        assert _reason_of_verify(ledger, root_key) is VerifyReason.RECORD_MISMATCH
        assert _reason_of_read(ledger.verified_trust) is VerifyReason.RECORD_MISMATCH
    finally:
        ledger.close()
