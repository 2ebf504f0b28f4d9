"""Canonical encoding: one byte string per value, stable across runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.canonical import canonical_json, event_body, format_timestamp, parse_timestamp

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@given(json_values)
def test_round_trips_and_is_byte_stable(value: Any) -> None:
    encoded = canonical_json(value)
    decoded = msgspec.json.decode(encoded)
    assert decoded == value
    assert canonical_json(decoded) == encoded


@given(st.dictionaries(st.text(max_size=6), st.integers(), max_size=8))
def test_key_order_does_not_matter(mapping: dict[str, int]) -> None:
    reversed_insertion = dict(reversed(list(mapping.items())))
    assert canonical_json(mapping) == canonical_json(reversed_insertion)


@given(
    st.dictionaries(
        st.text(
            alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=6
        ),
        st.text(alphabet=st.characters(exclude_categories=["Cs"])),
        max_size=6,
    )
)
def test_matches_python_sorted_compact_json_in_the_bmp(mapping: dict[str, str]) -> None:
    """An independent verifier can use any JSON library with sorted keys,
    compact separators and raw UTF-8 (the rule in guides/ledger-format.md)."""
    expected = json.dumps(mapping, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(mapping) == expected.encode("utf-8")


def test_escapes_are_fixed() -> None:
    assert canonical_json('a"\\\n\t\x01\x7fé/') == b'"a\\"\\\\\\n\\t\\u0001\x7f\xc3\xa9/"'


@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)))
def test_timestamps_have_one_form(moment: datetime) -> None:
    text = format_timestamp(moment)
    assert len(text) == 27 and text.endswith("Z")
    assert parse_timestamp(text) == moment


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2026, 1, 1))


def test_body_layout() -> None:
    body = event_body(
        originator_id=UUID(int=1),
        version=3,
        timestamp=datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
        topic="chassis.trust.key-revoked.v1",
        payload={"reason": "lost", "revoked_keyid": "ab"},
        prev="00" * 32,
        keyid="cd",
    )
    assert canonical_json(body) == (
        b'{"id":"00000000-0000-0000-0000-000000000001","keyid":"cd",'
        b'"payload":{"reason":"lost","revoked_keyid":"ab"},"prev":"' + b"0" * 64 + b'",'
        b'"timestamp":"2026-11-27T12:00:00.000000Z","topic":"chassis.trust.key-revoked.v1","version":3}'
    )
