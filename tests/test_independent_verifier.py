"""A verifier written from guides/ledger-format.md alone agrees with
``chassis ledger verify`` on honest and tampered ledgers.

``independent_verify`` below uses only the standard library, PyNaCl for
Ed25519 and the text of the guide (its topic table, §6.4): no Chassis code.
The tests build ledgers with Chassis, break them in the ways issue 10 names
(and at random), and compare the reason and position each verifier reports.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import Ledger
from ledger.hosts import Host, HostSettings
from ledger.keys import KeyPair
from proofs.chain import LedgerVerificationError, verify_ledger
from tests.ledger.test_verified_reads import VIOLATIONS, _body, _resign, _trust_mallory
from tests.rawstore import RawStore

GUIDE = (Path(__file__).resolve().parents[1] / "guides" / "ledger-format.md").read_text()
_section = GUIDE[GUIDE.index("### 6.4 Topic schemas") : GUIDE.index("## 7. Trust rules")]
TOPICS: dict[str, dict[str, Any]] = json.loads(
    re.findall(r"```json\n(.*?)\n```", _section, re.DOTALL)[0]
)
TAG = b"chassis.ledger.event.v1\x00"  # §4
GENESIS = "0" * 64  # §2
TRUST_ID = "caaee541-c4de-5abf-8526-423b5d8c675d"  # §6
ROLES = ("admin", "operator", "approver", "checkpoint")  # §7
STATE = re.compile(
    rb'\{"digest":"([0-9a-f]{64})","event":(.*),"sig":"([A-Za-z0-9+/=]{88})"\}', re.S
)
HEX64 = re.compile(r"[0-9a-f]{64}")
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
BODY_TYPES = {"id": str, "keyid": str, "payload": object, "prev": str, "timestamp": str,
              "topic": str, "version": int}  # fmt: skip


class Rejected(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Float:
    """A number with a fraction or exponent, kept for step 4."""


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _canonical(value: Any) -> bytes:  # §3
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _numbers_ok(value: Any) -> bool:  # §3 rules 1 and 4
    if isinstance(value, _Float):
        return False
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, dict):
        return all(_numbers_ok(v) for v in value.values())
    if isinstance(value, list):
        return all(_numbers_ok(v) for v in value)
    return True


def _matches(value: Any, schema: Any) -> bool:  # §6.4
    if schema == "any":
        return True
    if schema == "string":
        return isinstance(value, str)
    if schema == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if schema == "boolean":
        return isinstance(value, bool)
    if schema == "null":
        return value is None
    if "array" in schema:
        return isinstance(value, list) and all(_matches(v, schema["array"]) for v in value)
    if "map" in schema:
        return isinstance(value, dict) and all(_matches(v, schema["map"]) for v in value.values())
    if "object" in schema:
        members = schema["object"]
        return (
            isinstance(value, dict)
            and set(value) == set(members)
            and all(_matches(value[k], members[k]) for k in members)
        )
    return any(_matches(value, alternative) for alternative in schema["anyOf"])


def _stored_id(originator_id: Any) -> str:  # §1: uuid (PostgreSQL) or 32 hex digits (SQLite)
    if isinstance(originator_id, UUID):
        return str(originator_id)
    text = str(originator_id)
    if len(text) == 32:
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return text


class IndependentVerifier:
    def __init__(self, pinned_root: str) -> None:
        self.pinned_root = pinned_root
        self.heads: dict[str, tuple[int, str, str]] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.root = ""

    def record(self, seq: int, originator_id: Any, version: int, topic: str, state: bytes) -> None:
        # Step 1: the record's exact bytes and the body's shape.
        match = STATE.fullmatch(state)
        if match is None:
            raise Rejected("malformed-record")
        digest_hex, body_bytes, sig_text = match.groups()
        try:
            signature = base64.b64decode(sig_text, validate=True)
            body = json.loads(
                body_bytes, parse_float=lambda _: _Float(), parse_constant=_reject_constant
            )
        except (binascii.Error, ValueError):
            raise Rejected("malformed-record") from None
        rebuilt = b'{"digest":"%s","event":%s,"sig":"%s"}' % (
            digest_hex, body_bytes, base64.b64encode(signature)
        )
        if len(signature) != 64 or rebuilt != state or not isinstance(body, dict):
            raise Rejected("malformed-record")
        if set(body) != set(BODY_TYPES) or any(
            not isinstance(body[k], t) or (t is int and isinstance(body[k], bool))
            for k, t in BODY_TYPES.items()
        ):
            raise Rejected("malformed-record")
        # Steps 2-3: the row's columns, exactly as stored.
        if _stored_id(originator_id) != body["id"] or topic != body["topic"]:
            raise Rejected("record-mismatch")
        if body["version"] != version:
            raise Rejected("version-mismatch")
        # Steps 4-10: the body's own rules.
        if not _numbers_ok(body) or body["version"] < 1:
            raise Rejected("bad-number")
        try:
            valid_time = bool(STAMP.fullmatch(body["timestamp"])) and bool(
                datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
            )
        except ValueError:
            valid_time = False
        if not valid_time:
            raise Rejected("bad-timestamp")
        if not (
            UUID_TEXT.fullmatch(body["id"])
            and HEX64.fullmatch(body["keyid"])
            and HEX64.fullmatch(body["prev"])
        ):
            raise Rejected("malformed-record")
        entry = TOPICS.get(topic)
        if entry is None:
            raise Rejected("unknown-topic")
        if not _matches(body["payload"], {"object": entry["payload"]}):
            raise Rejected("bad-payload")
        if _canonical(body) != body_bytes:
            raise Rejected("non-canonical")
        digest = hashlib.sha256(TAG + body_bytes).digest()
        if digest.hex() != digest_hex.decode():
            raise Rejected("digest-mismatch")
        # Steps 11-13: the aggregate's chain and kind.
        last_version, last_digest, kind = self.heads.get(body["id"], (0, GENESIS, ""))
        if version != last_version + 1:
            raise Rejected("missing-version")
        if body["prev"] != last_digest:
            raise Rejected("broken-link")
        if entry["creates"] != (version == 1) or (kind and entry["kind"] != kind):
            raise Rejected("wrong-aggregate")
        # Steps 14-16: trust and the signature.
        public = self._signer(seq, body, entry)
        self._apply_trust(seq, body)
        try:
            nacl.signing.VerifyKey(public).verify(digest, signature)
        except nacl.exceptions.BadSignatureError:
            raise Rejected("bad-signature") from None
        self.heads[body["id"]] = (version, digest.hex(), entry["kind"])

    def _signer(self, seq: int, body: dict[str, Any], entry: dict[str, Any]) -> bytes:
        payload = body["payload"]
        if body["topic"] == "chassis.trust.established.v1":
            if self.root:
                raise Rejected("second-genesis")
            public = self._public(payload["public_key"], body["keyid"])
            if body["keyid"] != self.pinned_root:
                raise Rejected("root-mismatch")
            return public
        if not self.root:
            raise Rejected("no-genesis")
        key = self.keys.get(body["keyid"])
        if key is None:
            raise Rejected("unknown-key")
        if key["revoked"]:
            raise Rejected("revoked-key")
        if entry["role"] not in key["roles"]:
            raise Rejected("role-not-allowed")
        return bytes.fromhex(key["public"])

    @staticmethod
    def _public(public_hex: str, keyid: str) -> bytes:
        try:
            public = bytes.fromhex(public_hex)
        except ValueError:
            raise Rejected("bad-trust-payload") from None
        if public.hex() != public_hex or hashlib.sha256(public).hexdigest() != keyid:
            raise Rejected("bad-trust-payload")
        return public

    @staticmethod
    def _roles(roles: list[str]) -> list[str]:
        if any(role not in ROLES for role in roles):
            raise Rejected("unknown-role")
        if not roles or roles != sorted(set(roles)):
            raise Rejected("bad-trust-payload")
        return roles

    def _apply_trust(self, seq: int, body: dict[str, Any]) -> None:
        topic, payload = body["topic"], body["payload"]
        is_trust = topic.startswith("chassis.trust.")
        if is_trust != (body["id"] == TRUST_ID):
            raise Rejected("wrong-aggregate")
        if topic == "chassis.trust.established.v1":
            if "admin" not in self._roles(payload["roles"]):
                raise Rejected("bad-trust-payload")
            self.root = body["keyid"]
            self.keys[body["keyid"]] = {
                "public": payload["public_key"], "roles": payload["roles"], "revoked": False,
                "name": payload["name"],
            }  # fmt: skip
        elif topic == "chassis.trust.key-trusted.v1":
            self._public(payload["public_key"], payload["trusted_keyid"])
            roles = self._roles(payload["roles"])
            if payload["trusted_keyid"] in self.keys:
                raise Rejected("key-retrusted")
            names = {k["name"] for k in self.keys.values() if not k["revoked"]}
            if not payload["name"] or payload["name"] in names:
                raise Rejected("bad-trust-payload")
            self.keys[payload["trusted_keyid"]] = {
                "public": payload["public_key"], "roles": roles, "revoked": False,
                "name": payload["name"],
            }  # fmt: skip
        elif topic == "chassis.trust.key-revoked.v1":
            key = self.keys.get(payload["revoked_keyid"])
            if key is None or key["revoked"] or not payload["reason"].strip():
                raise Rejected("bad-trust-payload")
            key["revoked"] = True


def independent_verify(rows: list[Any], pinned_root: str) -> tuple[str, int] | None:
    """(reason, seq) of the first bad record in global order, or None."""
    verifier = IndependentVerifier(pinned_root)
    for row in rows:
        try:
            verifier.record(*row)
        except Rejected as e:
            return e.reason, row[0]
    return None


def chassis_verify(ledger: Ledger, root: KeyPair) -> tuple[str, int] | None:
    try:
        verify_ledger(ledger.scan(), pinned_root=root.keyid)
    except LedgerVerificationError as e:
        return e.failure.reason.value, e.failure.seq
    return None


def both(ledger: Ledger, root: KeyPair) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    return independent_verify(list(ledger.scan()), root.keyid), chassis_verify(ledger, root)


def _hosts(ledger: Ledger, key: KeyPair) -> None:
    """Chassis topics only (the guide documents no test topics): two hosts,
    the second removed with the reason ``entry 2`` as its last record."""
    settings = HostSettings(environment="prod", connector="ssh", root="/srv/app", address="h")
    first = Host.register("web-1", settings, actor=key.keyid)
    ledger.append(first)
    second = Host.register("web-2", settings, actor=key.keyid)
    ledger.append(second)
    second.remove("entry 2", actor=key.keyid)
    ledger.append(second)


def test_an_honest_ledger_passes_both(ledger: Ledger, root_key: KeyPair, isolation: Path) -> None:
    _hosts(ledger, root_key)
    _trust_mallory(ledger, root_key, isolation)
    assert both(ledger, root_key) == (None, None)


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_key_signed_violations_get_the_same_reason(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, violation: str
) -> None:
    _hosts(ledger, root_key)
    make, reason = VIOLATIONS[violation]
    row = RawStore(ledger_url).rows()[-1]
    RawStore(ledger_url).set_state(row.seq, _resign(row, root_key, make(_body(row))))
    independent, chassis = both(ledger, root_key)
    assert independent == chassis == (reason.value, row.seq)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"roles": ["superuser"]}, "unknown-role"),
        ({"roles": ["operator", "admin"]}, "bad-trust-payload"),
        ({"roles": []}, "bad-trust-payload"),
        ({"trusted_keyid": "ab" * 32}, "bad-trust-payload"),
        ({"name": "root"}, "bad-trust-payload"),
    ],
)
def test_trust_violations_get_the_same_reason(
    ledger: Ledger,
    ledger_url: str,
    root_key: KeyPair,
    isolation: Path,
    change: dict[str, Any],
    reason: str,
) -> None:
    _trust_mallory(ledger, root_key, isolation)
    row = RawStore(ledger_url).rows()[-1]
    body = _body(row)
    body["payload"].update(change)
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    RawStore(ledger_url).set_state(row.seq, _resign(row, root_key, raw))
    independent, chassis = both(ledger, root_key)
    assert independent == chassis == (reason, row.seq)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_gets_the_same_verdict(
    ledger: Ledger, root_key: KeyPair, isolation: Path, data: st.DataObject
) -> None:
    if not list(ledger.scan())[1:]:
        _hosts(ledger, root_key)
        _trust_mallory(ledger, root_key, isolation)
    rows = list(ledger.scan())
    at = data.draw(st.integers(0, len(rows) - 1))
    seq, originator, version, topic, state = rows[at]
    offset = data.draw(st.integers(0, len(state) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != state[offset]))
    changed = state[:offset] + bytes([value]) + state[offset + 1 :]
    rows[at] = (seq, originator, version, topic, changed)
    chassis: tuple[str, int] | None
    try:
        verify_ledger(rows, pinned_root=root_key.keyid)
        chassis = None
    except LedgerVerificationError as e:
        chassis = (e.failure.reason.value, e.failure.seq)
    assert independent_verify(rows, root_key.keyid) == chassis
