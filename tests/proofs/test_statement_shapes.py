"""A rollback or evolution proof's statement, checked offline, fails with a
named check whatever shape its fields take: never an exception of another
kind (a verifier's crash is not a verdict)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ledger.canonical import canonical_json
from ledger.evolution import GATES
from ledger.installations import STATE_TAG
from proofs.evolution import check_evolution_statement
from proofs.intoto import ROLLBACK_PROOF_PREDICATE, STATEMENT_TYPE
from proofs.rollback import ProofCheckError, check_rollback_statement
from tests.evolution.test_evolution import statement as evolution_statement

V1, V2 = "a" * 64, "b" * 64
STATE = {
    "app": "shop",
    "environment": "dev",
    "profile": "spread",
    "placement": {"g1": "h1", "g2": "h2"},
    "hosts": {
        "h1": {"components": ["api"], "label": "v1", "release_id": V1},
        "h2": {"components": ["web"], "label": "v2", "release_id": V2},
    },
}
DIGEST = hashlib.sha256(STATE_TAG + canonical_json(STATE)).hexdigest()
GOOD = {
    "_type": STATEMENT_TYPE,
    "predicateType": ROLLBACK_PROOF_PREDICATE,
    "subject": [
        {"name": "shop/dev@v1", "digest": {"sha256": V1}},
        {"name": "shop/dev@v2", "digest": {"sha256": V2}},
    ],
    "predicate": {
        "ledger": {"verified": True},
        "installation": {"app": "shop", "environment": "dev", "id": "x"},
        "target": {
            "revision": 1,
            "version": 9,
            "label": "v1",
            "release_id": V1,
            "state_digest": DIGEST,
            "recorded_state_digest": DIGEST,
            "state": STATE,
        },
        "post_state_digest": DIGEST,
        "restored_exactly": True,
        "rollback": {
            "revision": 3,
            "op_id": "o" * 32,
            "status": "deployed",
            "description": "rollback to 1 (v1)",
            "from_revision": 2,
            "started_version": 10,
            "finished_version": 20,
        },
        "events": [
            {"seq": 1, "version": 9, "originator_id": "x", "topic": "t", "digest": "d" * 64}
        ],
    },
}
PATHS = [
    ("subject",),
    ("subject", 0),
    ("subject", 0, "digest"),
    ("subject", 1, "name"),
    ("predicate", "installation"),
    ("predicate", "installation", "app"),
    ("predicate", "target", "state"),
    ("predicate", "target", "state", "hosts"),
    ("predicate", "target", "state", "hosts", "h1"),
    ("predicate", "target", "state", "hosts", "h2", "release_id"),
    ("predicate", "target", "label"),
    ("predicate", "target", "release_id"),
    ("predicate", "target", "version"),
    ("predicate", "rollback", "started_version"),
    ("predicate", "events", 0),
    ("predicate", "events", 0, "seq"),
]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def test_the_good_statement_passes() -> None:
    names = [c.name for c in check_rollback_statement(GOOD)]
    assert {"target-state", "subject"} <= set(names)


def changed(good: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    body = copy.deepcopy(good)
    parent: Any = body
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return body


@given(st.sampled_from(PATHS), st.one_of(st.just(None), json_values), st.booleans())
@example(("predicate", "target", "release_id"), None, False)  # each found by the old code
@example(("subject", 1, "name"), [], False)
@example(("subject", 0, "digest"), [None], False)
def test_any_rollback_field_in_any_shape_fails_with_a_named_check(
    path: tuple[Any, ...], value: Any, delete: bool
) -> None:
    with contextlib.suppress(ProofCheckError):
        check_rollback_statement(changed(GOOD, path, value, delete))


GATES_PASSED = [
    {"gate": g, "required": True, "status": "PASS", "verdict": {"seq": 1}} for g in GATES
]
EVOLUTION_PATHS = [
    ("subject",),
    ("subject", 0),
    ("subject", 0, "name"),
    ("subject", 0, "digest"),
    ("subject", 0, "digest", "sha256"),
    ("predicate", "run", "app"),
    ("predicate", "run", "candidate"),
    ("predicate", "run", "candidate", "label"),
    ("predicate", "run"),
    ("predicate", "gates"),
    ("predicate", "gates", 0),
    ("predicate", "gates", 0, "gate"),
    ("predicate", "gates", 1, "status"),
    ("predicate", "promoted"),
]


def test_the_good_evolution_statement_passes() -> None:
    check_evolution_statement(evolution_statement(GATES_PASSED, True))


@given(st.sampled_from(EVOLUTION_PATHS), st.one_of(st.just(None), json_values), st.booleans())
@example(("subject", 0, "digest"), [None], False)  # each found by the old code
@example(("predicate", "gates", 0), None, False)
def test_any_evolution_subject_field_in_any_shape_fails_with_a_named_check(
    path: tuple[Any, ...], value: Any, delete: bool
) -> None:
    good = evolution_statement(GATES_PASSED, True)
    with contextlib.suppress(ProofCheckError):
        check_evolution_statement(changed(good, path, value, delete))
