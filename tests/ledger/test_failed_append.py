"""An append the store refuses leaves the aggregate as it was in the ledger's
eyes: its events stay pending, so the next append writes them in order.

Before, the refused events were dropped from the aggregate, and its next
append wrote the following version: a gap that every later verification
reports as missing-version, as if the ledger had been tampered with.
"""

from __future__ import annotations

from uuid import UUID

import pytest

from ledger.application import Ledger
from ledger.errors import LedgerError
from ledger.keys import KeyPair
from proofs.chain import verify_ledger
from tests.notes import Notebook
from tests.rawstore import RawStore


def test_a_refused_append_is_written_by_the_next_one_without_a_gap(
    ledger: Ledger, root_key: KeyPair, ledger_url: str
) -> None:
    book = Notebook.open("a", keyid=root_key.keyid)
    ledger.append(book)
    store = RawStore(ledger_url)
    store.refuse_inserts()
    book.note("refused at first", keyid=root_key.keyid)
    with pytest.raises(LedgerError):
        ledger.append(book)
    assert [e.originator_version for e in book.pending_events] == [2]
    store.allow_inserts()
    book.note("after the store recovered", keyid=root_key.keyid)
    ledger.append(book)
    assert not book.pending_events
    stored_versions = [(UUID(r.originator_id), r.version) for r in store.rows()]
    assert stored_versions[-3:] == [(book.id, 1), (book.id, 2), (book.id, 3)]
    verify_ledger(ledger.scan(), pinned_root=root_key.keyid)
    stored = ledger.load(Notebook, book.id)
    assert stored.lines == ["refused at first", "after the store recovered"]
