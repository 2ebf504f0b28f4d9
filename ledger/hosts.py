"""Hosts: registration, inventory facts and hardware admission, as events.

A removed host keeps its history; adding it again reconfigures the same
aggregate. Facts are stored as recorded by the probe (plain JSON values, no
floats) together with a digest of their stable part, so an inventory whose
capacity has not changed appends nothing.

A host's SSH host key is pinned here too (``key-pinned``), so one pin serves
every workspace on the ledger. A pin names the address and port it was taken
at: once the host is reconfigured elsewhere it no longer applies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from typing import Any, ClassVar

import msgspec

from ledger.aggregate import LedgerAggregate
from ledger.canonical import format_timestamp
from ledger.errors import DomainRuleError
from ledger.events import LedgerEvent


class HostSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach a host and where its files live. Never holds secrets:
    ``key_file`` is a path, its content stays on the operator's machine."""

    environment: str
    connector: str
    root: str
    address: str | None = None
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    supervisor: str = "direct"
    labels: dict[str, str] = {}


SSH_KEY_TYPE = re.compile(r"\A[a-z0-9][a-z0-9@.-]{0,63}\Z")
"""An SSH public key algorithm name as known_hosts spells it (``ssh-ed25519``,
``ecdsa-sha2-nistp256``, ``ssh-rsa``, ``sk-ssh-ed25519@openssh.com``)."""
MAX_KEY_BLOB = 16384


def ssh_key_fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a public key blob (no padding)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def ssh_key_problem(key_type: str, public_key: str, fingerprint: str) -> str | None:
    """Why a pin's key fields are not one well-formed SSH public key, or None.

    ``public_key`` is the base64 of the key blob, as in known_hosts; the blob
    starts with its own type name, which must be ``key_type``, and
    ``fingerprint`` must be the blob's. These values end up in a known_hosts
    file, so they are checked as data before they are recorded (DESIGN.md §1,
    principle 10)."""
    if not SSH_KEY_TYPE.match(key_type):
        return f"key type {key_type!r} is not an SSH key type name"
    if len(public_key) > MAX_KEY_BLOB or not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", public_key):
        return "the public key is not base64"
    try:
        blob = base64.b64decode(public_key, validate=True)
    except (binascii.Error, ValueError):
        return "the public key is not base64"
    if len(blob) < 4:
        return "the public key is too short"
    (length,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + length] != key_type.encode("ascii"):
        return f"the public key is not a {key_type} key"
    if fingerprint != ssh_key_fingerprint(blob):
        return f"fingerprint {fingerprint!r} is not the public key's"
    return None


class PinnedHostKey(msgspec.Struct, frozen=True, kw_only=True):
    """The SSH host key recorded for a host at ``address``:``port``."""

    address: str
    port: int
    key_type: str
    public_key: str
    fingerprint: str
    keyid: str
    """The key that signed the pin."""
    pinned_at: str


class Host(LedgerAggregate):
    KIND = "host"
    name: str
    settings: HostSettings
    removed: bool
    removed_reason: str | None
    facts: dict[str, Any] | None
    facts_digest: str | None
    inventoried_at: str | None
    admissions: dict[str, dict[str, Any]]
    host_key: PinnedHostKey | None

    class Registered(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.registered.v1"
        ROLE: ClassVar[str] = "operator"
        CREATES: ClassVar[bool] = True
        name: str
        settings: HostSettings

        def apply(self, aggregate: Host) -> None:
            aggregate.name = self.name
            aggregate.settings = self.settings
            aggregate.removed = False
            aggregate.removed_reason = None
            aggregate.facts = None
            aggregate.facts_digest = None
            aggregate.inventoried_at = None
            aggregate.admissions = {}
            aggregate.host_key = None

    class Reconfigured(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.reconfigured.v1"
        ROLE: ClassVar[str] = "operator"
        settings: HostSettings

        def apply(self, aggregate: Host) -> None:
            aggregate.settings = self.settings
            aggregate.removed = False
            aggregate.removed_reason = None

    class Inventoried(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.inventoried.v1"
        ROLE: ClassVar[str] = "operator"
        facts: dict[str, Any]
        facts_digest: str

        def apply(self, aggregate: Host) -> None:
            aggregate.facts = self.facts
            aggregate.facts_digest = self.facts_digest
            aggregate.inventoried_at = format_timestamp(self.timestamp)

    class AdmissionEvaluated(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.admission-evaluated.v1"
        ROLE: ClassVar[str] = "operator"
        runtime: str
        admitted: bool
        reasons: list[str]
        requirements: dict[str, Any]
        facts_digest: str

        def apply(self, aggregate: Host) -> None:
            aggregate.admissions[self.runtime] = {
                "admitted": self.admitted,
                "reasons": list(self.reasons),
                "facts_digest": self.facts_digest,
                "at": format_timestamp(self.timestamp),
            }

    class KeyPinned(LedgerEvent, frozen=True, kw_only=True):
        """The host's one SSH host key, for every workspace on the ledger."""

        TOPIC: ClassVar[str] = "chassis.host.key-pinned.v1"
        ROLE: ClassVar[str] = "operator"
        address: str
        port: int
        key_type: str
        public_key: str
        """Base64 of the SSH public key blob, as in known_hosts."""
        fingerprint: str
        replaces: str | None
        """The fingerprint of the key this pin replaces, if any."""

        def apply(self, aggregate: Host) -> None:
            aggregate.host_key = PinnedHostKey(
                address=self.address,
                port=self.port,
                key_type=self.key_type,
                public_key=self.public_key,
                fingerprint=self.fingerprint,
                keyid=self.keyid,
                pinned_at=format_timestamp(self.timestamp),
            )

    class Removed(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.removed.v1"
        ROLE: ClassVar[str] = "operator"
        reason: str

        def apply(self, aggregate: Host) -> None:
            aggregate.removed = True
            aggregate.removed_reason = self.reason

    @classmethod
    def register(cls, name: str, settings: HostSettings, *, actor: str) -> Host:
        return cls.create(
            cls.Registered, id=cls.id_for(name), keyid=actor, name=name, settings=settings
        )

    def reconfigure(self, settings: HostSettings, *, actor: str) -> None:
        """Record new settings (or re-add a removed host); no-op when unchanged."""
        if settings != self.settings or self.removed:
            self.trigger(self.Reconfigured, keyid=actor, settings=settings)

    def record_facts(self, facts: dict[str, Any], digest: str, *, actor: str) -> bool:
        """Append facts unless their digest is the one already recorded."""
        if self.removed:
            raise DomainRuleError(f"host {self.name!r} was removed ({self.removed_reason})")
        if digest == self.facts_digest:
            return False
        self.trigger(self.Inventoried, keyid=actor, facts=facts, facts_digest=digest)
        return True

    def record_admission(
        self,
        runtime: str,
        *,
        admitted: bool,
        reasons: list[str],
        requirements: dict[str, Any],
        actor: str,
    ) -> None:
        if self.facts_digest is None:
            raise DomainRuleError(f"host {self.name!r} has no inventory yet")
        self.trigger(
            self.AdmissionEvaluated,
            keyid=actor,
            runtime=runtime,
            admitted=admitted,
            reasons=reasons,
            requirements=requirements,
            facts_digest=self.facts_digest,
        )

    def key_pin(self) -> PinnedHostKey | None:
        """The pinned SSH host key if it was pinned at the host's current
        address and port (a pin taken elsewhere does not apply), else None."""
        # A view's stored state from before pins has no host_key.
        pin: PinnedHostKey | None = getattr(self, "host_key", None)
        s = self.settings
        if pin is None or s.connector != "ssh" or (pin.address, pin.port) != (s.address, s.port):
            return None
        return pin

    def pin_key(
        self,
        *,
        key_type: str,
        public_key: str,
        fingerprint: str,
        replaces: str | None,
        actor: str,
    ) -> bool:
        """Record the host's SSH host key at its current address and port;
        False (nothing appended) when exactly that key is already pinned there."""
        s = self.settings
        if s.connector != "ssh" or s.address is None:
            raise DomainRuleError(f"host {self.name!r} is local: it has no SSH host key")
        problem = ssh_key_problem(key_type, public_key, fingerprint)
        if problem is not None:
            raise DomainRuleError(f"host {self.name!r}: {problem}")
        current = self.key_pin()
        if current is not None and (current.key_type, current.public_key) == (
            key_type,
            public_key,
        ):
            return False
        self.trigger(
            self.KeyPinned,
            keyid=actor,
            address=s.address,
            port=s.port,
            key_type=key_type,
            public_key=public_key,
            fingerprint=fingerprint,
            replaces=replaces,
        )
        return True

    def remove(self, reason: str, *, actor: str) -> None:
        if self.removed:
            raise DomainRuleError(f"host {self.name!r} is already removed")
        if not reason.strip():
            raise DomainRuleError("removing a host needs a reason")
        self.trigger(self.Removed, keyid=actor, reason=reason)
