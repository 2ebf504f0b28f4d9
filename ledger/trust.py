"""Trust is event-sourced: which keys may sign which events, and when.

The first event of a ledger's trust is ``Trust.Established``, self-signed by
the root key. Later keys are trusted or revoked by events signed by a key that
already holds ``admin``. A key is valid from its trust event (exclusive) until
its revocation event (inclusive: the revocation itself is the last moment it
counts), and only for its roles.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar
from uuid import UUID

import msgspec

from ledger.aggregate import LedgerAggregate
from ledger.canonical import format_timestamp
from ledger.checks import RecordRejected, VerifyReason
from ledger.errors import DomainRuleError, NotAuthorisedError, UnknownKeyError
from ledger.events import ROLES, LedgerEvent
from ledger.keys import keyid_for


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    APPROVER = "approver"
    CHECKPOINT = "checkpoint"


def parse_roles(text: str) -> list[str]:
    """``"admin,operator"`` → sorted unique roles. Raises ``DomainRuleError``."""
    roles = sorted({part.strip() for part in text.split(",") if part.strip()})
    unknown = [r for r in roles if r not in Role.__members__.values()]
    if unknown or not roles:
        raise DomainRuleError(
            f"roles {text!r}: expected a comma-separated subset of "
            f"{', '.join(r.value for r in Role)}"
        )
    return roles


class TrustedKey(msgspec.Struct, kw_only=True):
    keyid: str
    name: str
    public_key: str
    roles: list[str]
    trusted_at: str
    revoked_at: str | None = None
    revoked_reason: str | None = None
    trusted_pos: int = 0
    """Position of the event that trusted the key (global order, or the trust
    aggregate's version inside the write-side aggregate)."""
    revoked_pos: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def valid_at(self, position: int) -> bool:
        """Whether an event at ``position`` may be signed by this key: after the
        event that trusted it, up to and including the one that revoked it."""
        return self.trusted_pos < position and (
            self.revoked_pos is None or position <= self.revoked_pos
        )


def _violation(reason: VerifyReason, detail: str) -> RecordRejected:
    return RecordRejected(reason, detail)


def _checked_roles(roles: list[str]) -> list[str]:
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise _violation(VerifyReason.UNKNOWN_ROLE, f"unknown role {unknown[0]!r}")
    if not roles or roles != sorted(set(roles)):
        raise _violation(
            VerifyReason.BAD_TRUST_PAYLOAD, "roles must be a non-empty sorted list without repeats"
        )
    return roles


def _checked_public(public_key: str, keyid: str, what: str) -> bytes:
    try:
        public = bytes.fromhex(public_key)
        matches = public_key == public.hex() and keyid_for(public) == keyid
    except ValueError:
        matches = False
    if not matches:
        raise _violation(
            VerifyReason.BAD_TRUST_PAYLOAD, f"{what} is not the key id of its public key"
        )
    return public


class TrustState:
    """The one fold of trust: which key may sign what, at which position.

    Every reader of trust (the application's authorisation and verified
    reads, ``chassis ledger verify``, checkpoints, proofs, ``key list``) gets
    its keys from this fold over the trust aggregate's events, applied in
    order with :meth:`apply` after :meth:`signer` accepted each one. A
    violated rule raises ``RecordRejected`` naming the reason
    (``guides/ledger-format.md`` §7).
    """

    def __init__(self) -> None:
        self.keys: dict[str, TrustedKey] = {}
        self.root_keyid = ""
        self.ledger_name = ""

    @property
    def established(self) -> bool:
        return bool(self.root_keyid)

    def signer(self, event: LedgerEvent, position: int) -> bytes:
        """The public key ``event`` at ``position`` must be signed with.

        Raises ``RecordRejected`` when no trusted key may sign it there."""
        if isinstance(event, Trust.Established):
            if self.established and position != self.keys[self.root_keyid].trusted_pos:
                raise _violation(VerifyReason.SECOND_GENESIS, "a second root of trust")
            return _checked_public(event.public_key, event.keyid, "the root key id")
        if not self.established:
            raise _violation(VerifyReason.NO_GENESIS, "an event before the root of trust")
        keyid = event.keyid
        key = self.keys.get(keyid)
        if key is None or key.trusted_pos >= position:
            raise _violation(
                VerifyReason.UNKNOWN_KEY, f"key {keyid[:16]} was not trusted before this event"
            )
        if key.revoked_pos is not None and position > key.revoked_pos:
            raise _violation(
                VerifyReason.REVOKED_KEY, f"key {keyid[:16]} was revoked before this event"
            )
        if event.ROLE not in key.roles:
            raise _violation(
                VerifyReason.ROLE_NOT_ALLOWED,
                f"key {keyid[:16]} holds {', '.join(key.roles)}, not {event.ROLE}",
            )
        return bytes.fromhex(key.public_key)

    def apply(self, event: LedgerEvent, position: int) -> None:
        """Fold one event accepted by :meth:`signer`; events of other
        aggregates change nothing."""
        if not event.TOPIC.startswith(TRUST_TOPIC_PREFIX):
            if event.originator_id == Trust.ID:
                raise _violation(
                    VerifyReason.WRONG_AGGREGATE, f"{event.TOPIC} in the trust aggregate"
                )
            return
        if event.originator_id != Trust.ID:
            raise _violation(
                VerifyReason.WRONG_AGGREGATE, "a trust record outside the trust aggregate"
            )
        at = format_timestamp(event.timestamp)
        if isinstance(event, Trust.Established):
            if "admin" not in _checked_roles(event.roles):
                raise _violation(VerifyReason.BAD_TRUST_PAYLOAD, "the root key must hold admin")
            self.root_keyid = event.keyid
            self.ledger_name = event.ledger_name
            self._add(event.keyid, event.name, event.public_key, event.roles, at, position)
        elif isinstance(event, Trust.KeyTrusted):
            _checked_public(event.public_key, event.trusted_keyid, "trusted_keyid")
            roles = _checked_roles(event.roles)
            existing = self.keys.get(event.trusted_keyid)
            if existing is not None:
                state = "revoked" if not existing.active else "trusted"
                raise _violation(
                    VerifyReason.KEY_RETRUSTED,
                    f"key {event.trusted_keyid[:16]} is already {state}",
                )
            if not event.name or any(k.name == event.name and k.active for k in self.keys.values()):
                raise _violation(
                    VerifyReason.BAD_TRUST_PAYLOAD,
                    f"key name {event.name!r} is empty or names another active key",
                )
            self._add(event.trusted_keyid, event.name, event.public_key, roles, at, position)
        elif isinstance(event, Trust.KeyRevoked):
            key = self.keys.get(event.revoked_keyid)
            if key is None or not key.active or not event.reason.strip():
                raise _violation(
                    VerifyReason.BAD_TRUST_PAYLOAD,
                    f"revokes key {event.revoked_keyid[:16]}, which is not an active key, "
                    "or gives no reason",
                )
            key.revoked_at = at
            key.revoked_reason = event.reason
            key.revoked_pos = position
        else:  # a trust topic this fold does not know: refuse rather than ignore
            raise _violation(VerifyReason.BAD_TRUST_PAYLOAD, f"unknown trust topic {event.TOPIC}")

    def _add(
        self, keyid: str, name: str, public_key: str, roles: list[str], at: str, position: int
    ) -> None:
        self.keys[keyid] = TrustedKey(
            keyid=keyid,
            name=name,
            public_key=public_key,
            roles=list(roles),
            trusted_at=at,
            trusted_pos=position,
        )

    def valid_keys(self, position: int) -> dict[str, TrustedKey]:
        """The keys that may sign an event at ``position`` (any role)."""
        return {k: key for k, key in self.keys.items() if key.valid_at(position)}

    def authorise(self, keyid: str, role: str) -> None:
        """Raise ``NotAuthorisedError`` unless ``keyid`` may sign events needing ``role`` now."""
        key = self.keys.get(keyid)
        if key is None:
            raise NotAuthorisedError(
                f"key {keyid[:16]} is not trusted by this ledger", reason="unknown-key"
            )
        if not key.active:
            raise NotAuthorisedError(
                f"key {keyid[:16]} ({key.name}) was revoked: {key.revoked_reason}",
                reason="revoked-key",
            )
        if role not in key.roles:
            raise NotAuthorisedError(
                f"key {keyid[:16]} ({key.name}) does not hold role '{role}' "
                f"(it holds {', '.join(key.roles)})",
                reason="role-not-allowed",
            )

    def find(self, ref: str) -> TrustedKey:
        """A key by name, full key id or a unique key-id prefix of 8+ hex digits."""
        if ref in self.keys:
            return self.keys[ref]
        named = [k for k in self.keys.values() if k.name == ref]
        active = [k for k in named if k.active]
        if named:
            return (active or named)[-1]
        if len(ref) >= 8:
            matches = [k for k in self.keys.values() if k.keyid.startswith(ref.lower())]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise DomainRuleError(f"key id prefix {ref!r} is ambiguous; give more digits")
        raise UnknownKeyError(f"no key named or with id {ref!r} in the ledger's trust")


TRUST_TOPIC_PREFIX = "chassis.trust."


class Trust(TrustState, LedgerAggregate):
    """The write side of trust: commands that append trust events. Its state
    is the same fold, with the aggregate's versions as positions."""

    KIND = "trust"

    class Established(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.trust.established.v1"
        ROLE: ClassVar[str] = "admin"
        CREATES: ClassVar[bool] = True
        name: str
        public_key: str
        roles: list[str]
        ledger_name: str

        def apply(self, aggregate: Trust) -> None:
            TrustState.__init__(aggregate)
            aggregate.apply(self, self.originator_version)

    class KeyTrusted(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.trust.key-trusted.v1"
        ROLE: ClassVar[str] = "admin"
        trusted_keyid: str
        name: str
        public_key: str
        roles: list[str]

        def apply(self, aggregate: Trust) -> None:
            aggregate.apply(self, self.originator_version)

    class KeyRevoked(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.trust.key-revoked.v1"
        ROLE: ClassVar[str] = "admin"
        revoked_keyid: str
        reason: str

        def apply(self, aggregate: Trust) -> None:
            aggregate.apply(self, self.originator_version)

    ID: ClassVar[UUID]

    @classmethod
    def establish(cls, *, keyid: str, name: str, public_key: bytes, ledger_name: str) -> Trust:
        """The genesis of trust: the root key vouches for itself with every role."""
        if keyid_for(public_key) != keyid:
            raise DomainRuleError("root key id does not match its public key")
        return cls.create(
            cls.Established,
            id=cls.ID,
            keyid=keyid,
            name=name,
            public_key=public_key.hex(),
            roles=sorted(r.value for r in Role),
            ledger_name=ledger_name,
        )

    def trust_key(self, *, actor: str, name: str, public_key: bytes, roles: list[str]) -> None:
        keyid = keyid_for(public_key)
        existing = self.keys.get(keyid)
        if existing is not None:
            state = "revoked" if not existing.active else "trusted"
            raise DomainRuleError(f"key {keyid[:16]} ({existing.name}) is already {state}")
        if any(k.name == name and k.active for k in self.keys.values()):
            raise DomainRuleError(f"an active key is already named {name!r}")
        self.trigger(
            self.KeyTrusted,
            keyid=actor,
            trusted_keyid=keyid,
            name=name,
            public_key=public_key.hex(),
            roles=parse_roles(",".join(roles)),
        )

    def revoke_key(self, *, actor: str, keyid: str, reason: str) -> None:
        key = self.keys.get(keyid)
        if key is None:
            raise DomainRuleError(f"key {keyid[:16]} is not in the ledger's trust")
        if not key.active:
            raise DomainRuleError(f"key {keyid[:16]} ({key.name}) is already revoked")
        if not reason.strip():
            raise DomainRuleError("a revocation needs a reason")
        admins = [k for k in self.keys.values() if k.active and Role.ADMIN in k.roles]
        if Role.ADMIN in key.roles and len(admins) == 1:
            raise DomainRuleError(
                f"key {keyid[:16]} ({key.name}) is the last active admin key; "
                "trust another admin key before revoking it"
            )
        self.trigger(self.KeyRevoked, keyid=actor, revoked_keyid=keyid, reason=reason)


Trust.ID = Trust.id_for("root")
