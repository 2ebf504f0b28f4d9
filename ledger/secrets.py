"""Secret metadata: which value version a named secret is at, who may read it.

One aggregate per secret name (``secret/<NAME>``). Its events record the
facts about a secret that anyone may know and everyone must be able to
check: the version, the recipients (key ids whose holders can decrypt it),
a keyed digest of the value, an optional time to live and why. They never
hold the value, its ciphertext or a key: the ciphertext lives beside the
ledger (``chassis_secret_versions``, ``guides/secrets.md``), and what is
signed here is what a reader checks those bytes against.

``value_digest`` is ``HMAC-SHA256(key = the version's 32-byte data key, msg =
the value's UTF-8 bytes)`` in lowercase hex: it names one value without
revealing it (the key is random, so no dictionary of guesses helps), and
whoever can decrypt the version can recompute it. A stored ciphertext that
decrypts to anything else was not written by the signer.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import msgspec

from ledger.aggregate import LedgerAggregate
from ledger.canonical import format_timestamp
from ledger.errors import DomainRuleError
from ledger.events import LedgerEvent

SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
"""A secret's name: 1-63 letters, digits, ``.``, ``_`` or ``-``, starting
with a letter or digit (so never a NUL, ``/`` or ``@``)."""

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def check_secret_name(name: str) -> str:
    """``name``, or ``DomainRuleError`` when it cannot name a secret."""
    if not SECRET_NAME.match(name):
        raise DomainRuleError(
            f"secret name {name!r}: expected 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _checked_recipients(recipients: list[str]) -> list[str]:
    if not recipients:
        raise DomainRuleError("a secret needs at least one recipient key")
    if any(not _HEX64.match(r) for r in recipients):
        raise DomainRuleError("recipients are full key ids (64 lowercase hex digits)")
    return sorted(set(recipients))


class SecretVersion(msgspec.Struct, kw_only=True):
    """What the ledger says about one version of a secret."""

    number: int
    recipients: list[str]
    digest: str
    ttl_s: int | None
    set_by: str
    set_at: str
    reason: str


class Secret(LedgerAggregate):
    KIND = "secret"
    name: str
    latest: int
    """The current version number (never ``version``: that is the aggregate's)."""
    versions: list[SecretVersion]
    """Every version, oldest first (``versions[n - 1]`` is version ``n``)."""
    live_from: int
    """The first version set since the secret was last removed: older ones
    have no stored ciphertext any more (``secret rm`` deleted it)."""
    removed: bool
    removed_by: str | None
    removed_reason: str | None

    class Set(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.secret.set.v1"
        ROLE: ClassVar[str] = "operator"
        CREATES: ClassVar[bool] = True
        name: str
        version: int
        """The secret's version: 1."""
        recipients: list[str]
        value_digest: str
        ttl_s: int | None
        reason: str

        def apply(self, aggregate: Secret) -> None:
            aggregate.name = self.name
            aggregate.latest = 0
            aggregate.versions = []
            aggregate.live_from = 1
            aggregate.removed = False
            aggregate.removed_by = None
            aggregate.removed_reason = None
            aggregate.add_version(self)

    class Rotated(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.secret.rotated.v1"
        ROLE: ClassVar[str] = "operator"
        name: str
        version: int
        """The secret's new version: the previous one plus one."""
        recipients: list[str]
        value_digest: str
        ttl_s: int | None
        reason: str

        def apply(self, aggregate: Secret) -> None:
            if aggregate.removed:  # set again after ``rm``: the versions before are gone
                aggregate.live_from = self.version
            aggregate.removed = False
            aggregate.removed_by = None
            aggregate.removed_reason = None
            aggregate.add_version(self)

    class RecipientsChanged(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.secret.recipients-changed.v1"
        ROLE: ClassVar[str] = "operator"
        version: int
        """The version re-wrapped: any live version (``grant`` and
        ``revoke-recipient`` record one event per version they change; before
        they did, only ever the current one)."""
        recipients: list[str]
        reason: str

        def apply(self, aggregate: Secret) -> None:
            entry = aggregate.at(self.version)
            if entry is not None:
                entry.recipients = list(self.recipients)

    class Removed(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.secret.removed.v1"
        ROLE: ClassVar[str] = "operator"
        reason: str

        def apply(self, aggregate: Secret) -> None:
            aggregate.removed = True
            aggregate.removed_by = self.keyid
            aggregate.removed_reason = self.reason

    def add_version(self, event: Secret.Set | Secret.Rotated) -> None:
        self.latest = event.version
        self.versions.append(
            SecretVersion(
                number=event.version,
                recipients=list(event.recipients),
                digest=event.value_digest,
                ttl_s=event.ttl_s,
                set_by=event.keyid,
                set_at=format_timestamp(event.timestamp),
                reason=event.reason,
            )
        )

    # Commands.

    @classmethod
    def new(
        cls,
        *,
        name: str,
        recipients: list[str],
        digest: str,
        ttl_s: int | None,
        reason: str,
        actor: str,
    ) -> Secret:
        """Version 1 of a new secret."""
        return cls.create(
            cls.Set,
            id=cls.id_for(check_secret_name(name)),
            keyid=actor,
            **_version_payload(name, 1, recipients, digest, ttl_s, reason),
        )

    def rotate(
        self, *, recipients: list[str], digest: str, ttl_s: int | None, reason: str, actor: str
    ) -> int:
        """A new value: version ``latest + 1`` (also after a removal)."""
        number = self.latest + 1
        self.trigger(
            self.Rotated,
            keyid=actor,
            **_version_payload(self.name, number, recipients, digest, ttl_s, reason),
        )
        return number

    def change_recipients(
        self, *, recipients: list[str], reason: str, actor: str, version: int | None = None
    ) -> None:
        """Version ``version`` (default: the current one) re-wrapped for
        ``recipients``; only a live version (set since the last removal)."""
        if self.removed:
            raise DomainRuleError(f"secret {self.name!r} was removed")
        number = self.latest if version is None else version
        entry = self.at(number)
        if entry is None or number < self.live_from:
            raise DomainRuleError(f"secret {self.name!r} has no live version {number}")
        checked = _checked_recipients(recipients)
        if checked == entry.recipients:
            raise DomainRuleError(
                f"secret {self.name!r} version {number}: the recipients are unchanged"
            )
        self.trigger(
            self.RecipientsChanged,
            keyid=actor,
            version=number,
            recipients=checked,
            reason=reason,
        )

    def remove(self, *, reason: str, actor: str) -> None:
        if self.removed:
            raise DomainRuleError(f"secret {self.name!r} is already removed")
        if not reason.strip():
            raise DomainRuleError("removing a secret needs a reason")
        self.trigger(self.Removed, keyid=actor, reason=reason)

    # Reading.

    @property
    def current(self) -> SecretVersion:
        return self.versions[self.latest - 1]

    @property
    def live(self) -> list[SecretVersion]:
        """The versions set since the secret was last removed, oldest first
        (none while it is removed): those whose ciphertext is kept."""
        if self.removed:
            return []
        return [v for v in self.versions if v.number >= self.live_from]

    def at(self, number: int) -> SecretVersion | None:
        """Version ``number``, or None when there is none."""
        if 1 <= number <= len(self.versions):
            return self.versions[number - 1]
        return None


def _version_payload(
    name: str, number: int, recipients: list[str], digest: str, ttl_s: int | None, reason: str
) -> dict[str, Any]:
    if not _HEX64.match(digest):
        raise DomainRuleError("a secret's digest is 64 lowercase hex digits")
    if ttl_s is not None and ttl_s <= 0:
        raise DomainRuleError("a secret's ttl is a positive number of seconds")
    return {
        "name": name,
        "version": number,
        "recipients": _checked_recipients(recipients),
        "value_digest": digest,
        "ttl_s": ttl_s,
        "reason": reason,
    }
