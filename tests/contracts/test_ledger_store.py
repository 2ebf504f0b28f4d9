"""One contract, every backend: what the ledger promises about storage."""

from __future__ import annotations

import itertools

import pytest

from ledger.application import Ledger
from ledger.canonical import GENESIS
from ledger.errors import ConflictError, NotAuthorisedError, NotFoundError
from ledger.keys import KeyPair, generate_keypair
from ledger.records import parse_record
from ledger.storage import StorageConfig, open_ledger
from ledger.trust import Trust
from proofs.chain import verify_ledger
from tests.notes import Notebook


def test_events_round_trip_and_chain(ledger: Ledger, root_key: KeyPair) -> None:
    book = Notebook.open("ops", keyid=root_key.keyid)
    for i in range(3):
        book.note(f"line {i}", keyid=root_key.keyid)
    ledger.append(book)

    loaded = ledger.load(Notebook, book.id)
    assert loaded.lines == ["line 0", "line 1", "line 2"]
    assert loaded.version == 4
    assert loaded.chain_head == book.chain_head

    rows = [r for r in ledger.records() if str(r.originator_id) == str(book.id)]
    records = [
        parse_record(r.id, r.originator_id, r.originator_version, r.topic, r.state) for r in rows
    ]
    assert records[0].body.prev == GENESIS
    for earlier, later in itertools.pairwise(records):
        assert later.body.prev == earlier.digest.hex()
    assert [r.body.keyid for r in records] == [root_key.keyid] * 4


def test_global_order_is_append_order(ledger: Ledger, root_key: KeyPair) -> None:
    a = Notebook.open("a", keyid=root_key.keyid)
    ledger.append(a)
    b = Notebook.open("b", keyid=root_key.keyid)
    ledger.append(b)
    a.note("after b", keyid=root_key.keyid)
    ledger.append(a)
    seqs = [r.id for r in ledger.records()]
    assert seqs == sorted(seqs) and len(seqs) == 4
    topics = [(str(r.originator_id), r.originator_version) for r in ledger.records()][1:]
    assert topics == [(str(a.id), 1), (str(b.id), 1), (str(a.id), 2)]


def test_conflicting_append_is_refused_and_nothing_is_written(
    ledger: Ledger, root_key: KeyPair
) -> None:
    ledger.append(Notebook.open("shared", keyid=root_key.keyid))
    first = ledger.load(Notebook, Notebook.id_for("shared"))
    second = ledger.load(Notebook, Notebook.id_for("shared"))
    first.note("mine", keyid=root_key.keyid)
    second.note("theirs", keyid=root_key.keyid)
    ledger.append(first)
    before = ledger.max_seq()
    with pytest.raises(ConflictError, match="nothing was written"):
        ledger.append(second)
    assert ledger.max_seq() == before
    assert ledger.load(Notebook, first.id).lines == ["mine"]
    verify_ledger(ledger.scan())


def test_update_retries_a_safe_command_after_a_conflict(ledger: Ledger, root_key: KeyPair) -> None:
    ledger.append(Notebook.open("retry", keyid=root_key.keyid))
    calls: list[int] = []

    def command(book: Notebook) -> None:
        calls.append(book.version)
        if len(calls) == 1:  # another writer slips in between load and append
            rival = ledger.load(Notebook, book.id)
            rival.note("rival", keyid=root_key.keyid)
            ledger.append(rival)
        book.note("mine", keyid=root_key.keyid)

    result = ledger.update(Notebook, Notebook.id_for("retry"), command)
    assert calls == [1, 2]
    assert result.lines == ["rival", "mine"]


def test_unsafe_command_is_not_retried(ledger: Ledger, root_key: KeyPair) -> None:
    ledger.append(Notebook.open("once", keyid=root_key.keyid))

    def command(book: Notebook) -> None:
        rival = ledger.load(Notebook, book.id)
        rival.note("rival", keyid=root_key.keyid)
        ledger.append(rival)
        book.note("mine", keyid=root_key.keyid)

    with pytest.raises(ConflictError):
        ledger.update(Notebook, Notebook.id_for("once"), command, retry=False)
    assert ledger.load(Notebook, Notebook.id_for("once")).lines == ["rival"]


def test_past_versions_and_snapshots_agree(ledger: Ledger, root_key: KeyPair) -> None:
    book = Notebook.open("snap", keyid=root_key.keyid)
    ledger.append(book)
    for i in range(21):  # crosses SNAPSHOT_EVERY = 10 twice
        book.note(str(i), keyid=root_key.keyid)
        ledger.append(book)
    assert ledger.snapshots is not None
    snapshots = list(ledger.snapshots.get(book.id))
    # Each snapshot sits at the signed binding event that follows the crossing.
    assert [s.originator_version for s in snapshots] == [11, 21]
    events = dict(ledger.verified_events(book.id))
    bindings = [e for e in events.values() if isinstance(e, Notebook.SnapshotBound)]
    assert [e.originator_version for e in bindings] == [11, 21]
    for version in (1, 9, 10, 11, 12, 21, 22, 23):
        past = ledger.load(Notebook, book.id, version=version)
        assert past.version == version
        noted = [
            e.text for e in events.values() if isinstance(e, Notebook.Noted)
            and e.originator_version <= version
        ]
        assert past.lines == noted
    latest = ledger.load(Notebook, book.id)
    latest.note("after snapshot", keyid=root_key.keyid)  # links to the restored chain head
    ledger.append(latest)
    verify_ledger(ledger.scan())


def test_unknown_aggregate_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFoundError):
        ledger.load(Notebook, Notebook.id_for("nope"))


def test_key_without_role_or_trust_writes_nothing(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: object
) -> None:
    from pathlib import Path

    assert isinstance(isolation, Path)
    checkpointer = generate_keypair(isolation, "cp")
    stranger = generate_keypair(isolation, "stranger")
    ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.trust_key(
            actor=root_key.keyid,
            name="cp",
            public_key=checkpointer.public_key,
            roles=["checkpoint"],
        ),
    )
    before = ledger.max_seq()
    for signer, reason in ((checkpointer, "role-not-allowed"), (stranger, "unknown-key")):
        other = open_ledger(StorageConfig.from_url(ledger_url), signer)
        with pytest.raises(NotAuthorisedError) as caught:
            other.append(Notebook.open(f"by-{signer.name}", keyid=signer.keyid))
        assert caught.value.reason == reason
        other.close()
    assert ledger.max_seq() == before


def test_reopened_ledger_sees_everything(
    ledger_url: str, ledger: Ledger, root_key: KeyPair
) -> None:
    book = Notebook.open("persist", keyid=root_key.keyid)
    book.note("kept", keyid=root_key.keyid)
    ledger.append(book)
    ledger.close()
    again = open_ledger(StorageConfig.from_url(ledger_url), None)
    assert again.load(Notebook, book.id).lines == ["kept"]
    assert verify_ledger(again.scan(), pinned_root=root_key.keyid).events == 3
    again.close()
