"""in-toto Statement v1: the payload of every receipt envelope.

A Statement binds a predicate (what happened) to subjects (which artifacts,
by digest)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "...", "digest": {"sha256": "<64 hex>"}}],
     "predicateType": "<URI>",
     "predicate": {...}}

Statements are serialised as canonical JSON (``ledger.canonical``): sorted
keys, no whitespace, no floats, so the signed bytes are reproducible and any
in-toto tooling can read them. Subjects must be named and carry lowercase hex
digests; the length is checked for the usual algorithms.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from ledger.canonical import canonical_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
RECEIPT_PREDICATE = "https://chassis.dev/receipt/v1"
ROLLBACK_PROOF_PREDICATE = "https://chassis.dev/rollback-proof/v1"
EVOLUTION_PROOF_PREDICATE = "https://chassis.dev/evolution-proof/v1"

_HEX = re.compile(r"[0-9a-f]+")
_HEX_LENGTHS = {"sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


def subject(name: str, sha256: str) -> dict[str, Any]:
    """One subject resource descriptor; checked like every other subject."""
    descriptor = {"name": name, "digest": {"sha256": sha256}}
    _check_subject(descriptor, 0)
    return descriptor


def _check_subject(descriptor: object, index: int) -> None:
    where = f"subject {index}"
    if not isinstance(descriptor, Mapping):
        raise ValueError(f"{where}: expected an object")
    name = descriptor.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: 'name' must be a non-empty string")
    digest = descriptor.get("digest")
    if not isinstance(digest, Mapping) or not digest:
        raise ValueError(f"{where} ({name}): 'digest' must be a non-empty object")
    for algorithm, value in digest.items():
        if not isinstance(algorithm, str) or not algorithm:
            raise ValueError(f"{where} ({name}): digest algorithm must be a non-empty string")
        if not isinstance(value, str) or not _HEX.fullmatch(value):
            raise ValueError(f"{where} ({name}): {algorithm} digest must be lowercase hex")
        expected = _HEX_LENGTHS.get(algorithm)
        if expected is not None and len(value) != expected:
            raise ValueError(
                f"{where} ({name}): {algorithm} digest has {len(value)} hex digits, "
                f"expected {expected}"
            )


def _plain_json(value: object) -> bool:
    """True when ``value`` holds no float and only string keys, for the
    built-in JSON types: the common case, checked without building paths.
    False for anything else (then :func:`_walk_no_floats` says what).

    A loop over a stack, leaves tested where they are found: a receipt's
    predicate has thousands of nodes, and a call per node cost twice as much."""
    stack: list[object] = [value]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        kind = type(node)
        if kind is dict:
            for key, item in node.items():  # type: ignore[attr-defined]
                if type(key) is not str:
                    return False
                leaf = type(item)
                if not (leaf is str or leaf is int or leaf is bool or item is None):
                    push(item)
        elif kind is list or kind is tuple:
            for item in node:  # type: ignore[attr-defined]
                leaf = type(item)
                if not (leaf is str or leaf is int or leaf is bool or item is None):
                    push(item)
        elif not (kind is str or kind is int or kind is bool or node is None):
            return False
    return True


def _check_no_floats(value: object, path: str) -> None:
    if not _plain_json(value):
        _walk_no_floats(value, path)


def _walk_no_floats(value: object, path: str) -> None:
    if isinstance(value, float):
        raise ValueError(f"{path}: floats are not allowed in canonical JSON")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: object keys must be strings")
            _walk_no_floats(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk_no_floats(item, f"{path}[{index}]")


def _copy(value: Any) -> Any:
    """A deep copy: built-in containers rebuilt here (the common case, several
    times faster than ``copy.deepcopy``), anything else by ``copy.deepcopy``."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {key: _copy(item) for key, item in value.items()}
    if kind is list:
        return [_copy(item) for item in value]
    if kind is tuple:
        return tuple(_copy(item) for item in value)
    return copy.deepcopy(value)


def statement(
    subjects: list[dict[str, Any]], predicate_type: str, predicate: dict[str, Any]
) -> dict[str, Any]:
    """A validated Statement v1 (deep copies of the inputs)."""
    return check_statement(
        {
            "_type": STATEMENT_TYPE,
            "subject": _copy(subjects),
            "predicateType": predicate_type,
            "predicate": _copy(predicate),
        }
    )


def fresh_statement(
    subjects: list[dict[str, Any]], predicate_type: str, predicate: dict[str, Any]
) -> tuple[dict[str, Any], bytes]:
    """A validated Statement v1 made of values the caller has just built and
    hands over (not copied), and its canonical JSON: the DSSE payload, from
    one check instead of the two of :func:`statement` and :func:`statement_bytes`."""
    body = check_statement(
        {
            "_type": STATEMENT_TYPE,
            "subject": subjects,
            "predicateType": predicate_type,
            "predicate": predicate,
        }
    )
    return body, canonical_json(body)


def check_statement(value: object) -> dict[str, Any]:
    """Return ``value`` as a Statement v1 dict, or raise ``ValueError`` saying what is wrong."""
    if not isinstance(value, dict):
        raise ValueError("a statement must be a JSON object")
    if value.get("_type") != STATEMENT_TYPE:
        raise ValueError(f"'_type' must be {STATEMENT_TYPE!r}")
    subjects = value.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise ValueError("'subject' must be a non-empty list")
    for index, descriptor in enumerate(subjects):
        _check_subject(descriptor, index)
    predicate_type = value.get("predicateType")
    if not isinstance(predicate_type, str) or not _URI.fullmatch(predicate_type):
        raise ValueError("'predicateType' must be an absolute URI")
    if not isinstance(value.get("predicate"), dict):
        raise ValueError("'predicate' must be a JSON object")
    _check_no_floats(value, "statement")
    return value


def statement_bytes(st: Mapping[str, Any]) -> bytes:
    """The canonical JSON of a checked statement: the DSSE payload."""
    return canonical_json(check_statement(dict(st)))
