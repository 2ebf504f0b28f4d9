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
from ledger.errors import DomainRuleError, NotAuthorisedError, UnknownKeyError
from ledger.events import LedgerEvent
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

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Trust(LedgerAggregate):
    """The set of keys a ledger accepts, as of its latest version."""

    KIND = "trust"
    keys: dict[str, TrustedKey]
    root_keyid: str
    ledger_name: str

    class Established(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.trust.established.v1"
        ROLE: ClassVar[str] = "admin"
        CREATES: ClassVar[bool] = True
        name: str
        public_key: str
        roles: list[str]
        ledger_name: str

        def apply(self, aggregate: Trust) -> None:
            aggregate.keys = {}
            aggregate.root_keyid = self.keyid
            aggregate.ledger_name = self.ledger_name
            aggregate.add_key(
                self.keyid, self.name, self.public_key, self.roles, format_timestamp(self.timestamp)
            )

    class KeyTrusted(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.trust.key-trusted.v1"
        ROLE: ClassVar[str] = "admin"
        trusted_keyid: str
        name: str
        public_key: str
        roles: list[str]

        def apply(self, aggregate: Trust) -> None:
            aggregate.add_key(
                self.trusted_keyid,
                self.name,
                self.public_key,
                self.roles,
                format_timestamp(self.timestamp),
            )

    class KeyRevoked(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.trust.key-revoked.v1"
        ROLE: ClassVar[str] = "admin"
        revoked_keyid: str
        reason: str

        def apply(self, aggregate: Trust) -> None:
            key = aggregate.keys[self.revoked_keyid]
            key.revoked_at = format_timestamp(self.timestamp)
            key.revoked_reason = self.reason

    ID: ClassVar[UUID]

    def add_key(self, keyid: str, name: str, public_key: str, roles: list[str], at: str) -> None:
        self.keys[keyid] = TrustedKey(
            keyid=keyid, name=name, public_key=public_key, roles=list(roles), trusted_at=at
        )

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

    def authorise(self, keyid: str, role: str) -> None:
        """Raise ``NotAuthorisedError`` unless ``keyid`` may sign events needing ``role``."""
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


Trust.ID = Trust.id_for("root")
