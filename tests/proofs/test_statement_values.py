"""In-toto statements hold canonical JSON only: no float anywhere and only
string keys, however deep, whichever way the statement is made
(``statement``, ``fresh_statement``, ``check_statement``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.canonical import canonical_json
from proofs.intoto import (
    RECEIPT_PREDICATE,
    check_statement,
    fresh_statement,
    statement,
    subject,
)

SUBJECTS = [subject("shop/prod", "ab" * 32)]

leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
plain = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(plain)
def test_plain_values_at_any_depth_are_accepted(value: Any) -> None:
    body, payload = fresh_statement(SUBJECTS, RECEIPT_PREDICATE, {"value": value})
    assert payload == canonical_json(body)
    assert statement(SUBJECTS, RECEIPT_PREDICATE, {"value": value}) == body


@pytest.mark.parametrize(
    "predicate",
    [
        {"x": 1.5},
        {"x": [1, 2, {"y": [0.0]}]},
        {"x": {"y": {"z": (1, 2.25)}}},
        {"x": [[[[float("nan")]]]]},
        {"x": {1: "an int key"}},
        {"x": [{"y": {None: 1}}]},
    ],
    ids=["top", "list-in-dict", "tuple-deep", "nested-lists", "int-key", "none-key-deep"],
)
def test_a_float_or_a_non_string_key_anywhere_is_refused(predicate: dict[str, Any]) -> None:
    for make in (statement, fresh_statement):
        with pytest.raises(ValueError, match=r"floats are not allowed|keys must be strings"):
            make(SUBJECTS, RECEIPT_PREDICATE, predicate)


def test_the_error_names_where_the_float_is() -> None:
    value = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": SUBJECTS,
        "predicateType": RECEIPT_PREDICATE,
        "predicate": {"hosts": {"dev-1": {"steps": [{"ok": True}, {"elapsed": 0.5}]}}},
    }
    with pytest.raises(ValueError, match=r"statement\.predicate\.hosts\.dev-1\.steps\[1\]"):
        check_statement(value)
