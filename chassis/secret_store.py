"""The workspace's secret store: values encrypted to recipient keys, kept
beside the ledger so that a team on a shared ledger shares them.

Each version of a secret has its own random 32-byte data key. The value is
encrypted with AES-256-GCM under that key, its associated data naming the
format, the secret and the version (a ciphertext moved to another name or
version does not decrypt). The data key is wrapped to each recipient with a
libsodium sealed box to the X25519 form of the recipient's trusted Ed25519
key, so that only the holders of those private keys can read it. The
ciphertext and the wraps are rows of ``chassis_secret_versions`` in the
ledger's database (SQLite or the shared PostgreSQL ledger), never events.

What the rows must decrypt to is signed in the ledger (``ledger.secrets``):
which keys are the recipients of each version, and ``HMAC-SHA256(data key,
value)``. A row is only trusted once it decrypts, for a key the signed
events name, to a value with that digest: an attacker who can write the
database but holds no key can plant rows (anyone can seal a box to a public
key), but not rows that pass this check. Byte formats, threat model and
rotation: ``guides/secrets.md``.

Every value this module handles (set, rotated, revealed) is registered with
``proofs.redaction`` for the rest of the command.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import nacl.bindings
import nacl.exceptions
import nacl.public
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chassis.errors import ChassisError, NotFound
from ledger.application import Ledger
from ledger.canonical import format_timestamp, parse_timestamp
from ledger.errors import DomainRuleError, NotAuthorisedError, NotFoundError
from ledger.keys import KeyPair
from ledger.secrets import Secret, SecretVersion, check_secret_name
from ledger.tables import SideTables
from ledger.trust import Role, TrustedKey, TrustState
from proofs.redaction import MIN_WORD_CHARS, register_secret

FORMAT = b"chassis.secret.v1"
"""The format tag, first in every version's associated data."""
TABLE = "chassis_secret_versions"
"""The side table (named literally in the SQL below)."""
DATA_KEY_BYTES = 32
NONCE_BYTES = 12
MAX_VALUE_BYTES = 64 * 1024
DEFAULT_RECIPIENT_ROLE = Role.OPERATOR
"""Without ``recipients``, a new secret is encrypted to every active
trusted key holding this role: the keys that deploy, and so need values."""

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_TTL_S = 60
MAX_TTL_S = 3650 * 86400


class SecretStoreError(ChassisError):
    """A secret that cannot be stored or read as asked (exit 3)."""

    exit_code = 3


class SecretInputError(SecretStoreError):
    """A bad name, value or ttl given to a secret command (exit 2)."""

    exit_code = 2


class SecretNotFound(NotFound, SecretStoreError):
    """No such secret, or no such version of it (exit 10)."""

    exit_code = 10


class NoRecipientKey(SecretStoreError):
    """The acting key is not a recipient of that version (exit 5)."""

    exit_code = 5


class SecretTampered(SecretStoreError):
    """The stored bytes do not decrypt to what the signed events name (exit 8)."""

    exit_code = 8


# The byte formats (guides/secrets.md, "Formats").


def associated_data(name: str, version: int) -> bytes:
    """``chassis.secret.v1 ‖ 0x00 ‖ NAME ‖ 0x00 ‖ VERSION`` (UTF-8, the
    version in decimal): what AES-GCM authenticates besides the value."""
    return FORMAT + b"\x00" + name.encode() + b"\x00" + str(version).encode()


def value_digest(data_key: bytes, value: str) -> str:
    """``HMAC-SHA256(key = data key, msg = UTF-8 value)``, lowercase hex."""
    return hmac.new(data_key, value.encode(), hashlib.sha256).hexdigest()


def x25519_public(ed25519_public: bytes) -> nacl.public.PublicKey:
    """The X25519 public key of a trusted Ed25519 public key (libsodium's
    ``crypto_sign_ed25519_pk_to_curve25519``)."""
    try:
        converted = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
        raise SecretStoreError(
            "a recipient's public key has no X25519 form (not a valid Ed25519 point)"
        ) from e
    return nacl.public.PublicKey(converted)


def x25519_private(keypair: KeyPair) -> nacl.public.PrivateKey:
    """The X25519 private key of an Ed25519 key pair (libsodium's
    ``crypto_sign_ed25519_sk_to_curve25519`` of ``seed ‖ public key``)."""
    seed = keypair.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return nacl.public.PrivateKey(
        nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(seed + keypair.public_key)
    )


def wrap(data_key: bytes, ed25519_public: bytes) -> str:
    """The data key sealed to one recipient, in standard base64 (80 bytes
    before encoding: ephemeral public key, MAC, sealed key)."""
    sealed = nacl.public.SealedBox(x25519_public(ed25519_public)).encrypt(data_key)
    return base64.b64encode(sealed).decode()


def unwrap(wrapped: str, keypair: KeyPair) -> bytes:
    """The data key in ``wrapped``; raises ``ValueError`` when it does not open."""
    try:
        sealed = base64.b64decode(wrapped, validate=True)
        data_key: bytes = nacl.public.SealedBox(x25519_private(keypair)).decrypt(sealed)
    except (binascii.Error, nacl.exceptions.CryptoError, TypeError) as e:
        raise ValueError("the sealed box does not open") from e
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"the sealed box holds {len(data_key)} bytes, not a data key")
    return data_key


@dataclass(frozen=True)
class StoredVersion:
    """One row of ``chassis_secret_versions``: unverified until opened."""

    nonce: bytes
    ciphertext: bytes
    wraps: dict[str, str]


@dataclass
class RecipientChange:
    """What ``grant`` or ``revoke-recipient`` changed: the versions whose
    recipients it recorded, and those it left alone and why."""

    name: str
    keyid: str
    key_name: str
    versions: list[int] = field(default_factory=list)
    """Versions whose recipients were changed (each a signed event)."""
    not_recipient: list[int] = field(default_factory=list)
    """``grant``: versions the acting key cannot open (not a recipient)."""
    missing: list[int] = field(default_factory=list)
    """``grant``: versions recorded without a stored ciphertext."""
    last_recipient: list[int] = field(default_factory=list)
    """``revoke-recipient``: older versions the key is the only recipient of."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "secret": self.name,
            "key": {"keyid": self.keyid, "name": self.key_name},
            "versions": self.versions,
            "skipped": {
                "not_recipient": self.not_recipient,
                "missing": self.missing,
                "last_recipient": self.last_recipient,
            },
        }

    def warnings(self, acting: str) -> list[str]:
        """One line per kind of version left alone."""
        lines = []
        if self.not_recipient:
            lines.append(
                f"secret {self.name}: {_versions(self.not_recipient)} not granted to "
                f"{self.key_name}: {acting} is not a recipient of "
                f"{'it' if len(self.not_recipient) == 1 else 'them'}; one of "
                f"{'its' if len(self.not_recipient) == 1 else 'their'} recipients can run "
                f"'chassis secret grant {self.name} {self.key_name}'"
            )
        if self.missing:
            lines.append(
                f"secret {self.name}: {_versions(self.missing)} not granted: no ciphertext is "
                "stored (interrupted when set); it cannot be read by anyone"
            )
        if self.last_recipient:
            lines.append(
                f"secret {self.name}: {self.key_name} stays a recipient of "
                f"{_versions(self.last_recipient)}: it is the only one "
                f"('chassis secret rm {self.name}' removes every version)"
            )
        return lines


def _versions(numbers: list[int]) -> str:
    return ("version " if len(numbers) == 1 else "versions ") + ", ".join(map(str, numbers))


def parse_ttl(text: str) -> int:
    """``90m``, ``12h``, ``2h30m``, ``90d`` → seconds (1 minute to 3650 days)."""
    compact = text.replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise SecretInputError(
            f"--ttl: expected a duration such as 12h, 30d or 1h30m, not {text!r}"
        )
    seconds = sum(int(n) * _UNIT_S[u] for n, u in parts)
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise SecretInputError(f"--ttl: expected 1m to 3650d, not {text!r}")
    return seconds


def check_value(value: str, what: str = "the value") -> bytes:
    """The UTF-8 bytes of a value to store; refuses an empty or huge one."""
    if not value.strip():
        raise SecretInputError(f"{what} is empty: a secret needs a value")
    try:
        data = value.encode()
    except UnicodeEncodeError:
        raise SecretInputError(f"{what} is not valid UTF-8 text") from None
    if len(data) > MAX_VALUE_BYTES:
        raise SecretInputError(f"{what} is {len(data)} bytes; at most {MAX_VALUE_BYTES}")
    return data


class SecretStore:
    """Secrets of the ledger, read and written as ``keypair`` (which decrypts;
    appending signs with the ledger's own signer, normally the same key)."""

    def __init__(self, ledger: Ledger, keypair: KeyPair | None) -> None:
        self.ledger = ledger
        self.keypair = keypair
        self._tables: SideTables | None = None

    @property
    def tables(self) -> SideTables:
        """The side table, created on first use (SQLite or PostgreSQL)."""
        if self._tables is None:
            tables = SideTables(self.ledger)
            tables.create(
                "CREATE TABLE IF NOT EXISTS {chassis_secret_versions} (name TEXT NOT NULL, "
                "version INTEGER NOT NULL, nonce {blob} NOT NULL, ciphertext {blob} NOT NULL, "
                "wraps TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (name, version))"
            )
            self._tables = tables
        return self._tables

    # Writing.

    def set(
        self,
        name: str,
        value: str,
        *,
        recipients: list[str] | None = None,
        ttl_s: int | None = None,
        reason: str = "",
    ) -> int:
        """Store a new secret (version 1, or the next version of a removed
        one) and return its version. ``recipients``: key names or ids;
        default :meth:`default_recipients`."""
        _checked_name(name)
        check_value(value)
        register_secret(value, f"secret {name}")
        _check_reason(value, reason)
        secret = self._find(name)
        if secret is not None and not secret.removed:
            raise DomainRuleError(
                f"secret {name!r} already exists (version {secret.latest}); "
                f"'chassis secret rotate {name}' stores a new value"
            )
        keys = self._recipient_keys(recipients) if recipients else self._default_keys()
        return self._write(secret, name, value, keys, ttl_s, reason)

    def rotate(
        self,
        name: str,
        value: str,
        *,
        recipients: list[str] | None = None,
        ttl_s: int | None = None,
        reason: str = "",
    ) -> int:
        """Store a new value of an existing secret as the next version.
        ``recipients`` default: the current version's recipients that are
        still active trusted keys; ``ttl_s`` None keeps the current one."""
        _checked_name(name)
        check_value(value)
        register_secret(value, f"secret {name}")
        _check_reason(value, reason)
        secret = self._existing(name)
        if recipients:
            keys = self._recipient_keys(recipients)
        else:
            trust = self._trust()
            keys = {
                keyid: trust.keys[keyid]
                for keyid in secret.current.recipients
                if keyid in trust.keys and trust.keys[keyid].active
            }
            if not keys:
                raise DomainRuleError(
                    f"secret {name!r}: none of its recipients is an active trusted key; "
                    "name the new recipients (--recipient)"
                )
        ttl = secret.current.ttl_s if ttl_s is None else ttl_s
        return self._write(secret, name, value, keys, ttl, reason)

    def grant(self, name: str, keyid: str, reason: str) -> RecipientChange:
        """Wrap the data key of every live version the acting key can open
        for one more recipient, and record the new recipients of each version
        (one signed ``recipients-changed`` per version, in one save). Versions
        the acting key is not a recipient of are skipped and listed in the
        result; a version whose stored bytes do not verify stops the grant
        before anything is recorded (exit 8)."""
        secret = self._existing(name)
        key = self._recipient_key(keyid)
        who = f"key {key.name} ({key.keyid[:16]})"
        pending = [v for v in secret.live if key.keyid not in v.recipients]
        if not pending:
            raise DomainRuleError(
                f"{who} is already a recipient of every version of secret {name!r}"
            )
        keypair = self.keypair
        openable = [v for v in pending if keypair is not None and keypair.keyid in v.recipients]
        change = RecipientChange(
            name=name,
            keyid=key.keyid,
            key_name=key.name,
            not_recipient=[
                v.number for v in pending if v.number not in {o.number for o in openable}
            ],
        )
        rows: dict[int, dict[str, str]] = {}
        for entry in openable:
            stored = self._stored(name, entry.number)
            if stored is None:  # never written (an interrupted set): nothing to wrap
                change.missing.append(entry.number)
                continue
            data_key, value = self._open(secret, entry)
            register_secret(value, f"secret {name} version {entry.number}")
            _check_reason(value, reason)
            wraps = {k: w for k, w in stored.wraps.items() if k in entry.recipients}
            wraps[key.keyid] = wrap(data_key, bytes.fromhex(key.public_key))
            rows[entry.number] = wraps
        if not rows:
            if openable:
                raise self._missing(name, change.missing[0])
            if keypair is None:
                raise NoRecipientKey(f"secret {name!r}: no key selected to decrypt it")
            raise NoRecipientKey(
                f"secret {name!r}: key {keypair.name} ({keypair.keyid[:16]}) is not a recipient "
                f"of {_versions(change.not_recipient)}, so it cannot grant {key.name} any; "
                f"a recipient can run 'chassis secret grant {name} {key.name}'"
            )
        actor = self._actor()
        for number in sorted(rows):
            version = secret.at(number)
            assert version is not None
            secret.change_recipients(
                recipients=[*version.recipients, key.keyid],
                reason=reason,
                actor=actor,
                version=number,
            )
        self.ledger.append(secret)
        for number, wraps in sorted(rows.items()):
            self._set_wraps(name, number, wraps)
        change.versions = sorted(rows)
        return change

    def revoke_recipient(self, name: str, keyid: str, reason: str) -> RecipientChange:
        """Drop one recipient's wrap from every live version it is a recipient
        of, recording each version's new recipients (one save). A version it
        is the last recipient of keeps it (listed in the result), except the
        current one, which refuses the whole revocation. It cannot un-leak:
        a data key or value the key read before stays known to it; rotate."""
        if not reason.strip():
            raise SecretInputError("revoking a recipient needs a reason")
        secret = self._existing(name)
        key = self._trust().find(keyid)
        who = f"key {key.name} ({key.keyid[:16]})"
        holding = [v for v in secret.live if key.keyid in v.recipients]
        if not holding:
            raise DomainRuleError(f"{who} is not a recipient of secret {name!r}")
        if secret.current.recipients == [key.keyid]:
            raise DomainRuleError(
                f"key {key.name} is the last recipient of secret {name!r}; "
                f"'chassis secret rm {name}' removes the secret"
            )
        change = RecipientChange(name=name, keyid=key.keyid, key_name=key.name)
        actor = self._actor()
        rows: dict[int, dict[str, str] | None] = {}
        for entry in holding:
            remaining = [k for k in entry.recipients if k != key.keyid]
            if not remaining:
                change.last_recipient.append(entry.number)
                continue
            stored = self._stored(name, entry.number)
            rows[entry.number] = (
                None
                if stored is None
                else {k: w for k, w in stored.wraps.items() if k in remaining}
            )
            secret.change_recipients(
                recipients=remaining, reason=reason, actor=actor, version=entry.number
            )
        if not rows:
            raise DomainRuleError(
                f"{who} is the only recipient of {_versions(change.last_recipient)} of secret "
                f"{name!r}; 'chassis secret rm {name}' removes every version"
            )
        self.ledger.append(secret)
        for number, wraps in sorted(rows.items()):
            if wraps is not None:
                self._set_wraps(name, number, wraps)
        change.versions = sorted(rows)
        return change

    def remove(self, name: str, reason: str) -> None:
        """Record the secret removed and delete its stored versions."""
        secret = self._existing(name)
        secret.remove(reason=reason, actor=self._actor())
        self.ledger.append(secret)
        with self.tables.transaction(commit=True) as c:
            c.execute("DELETE FROM {chassis_secret_versions} WHERE name = ?", (name,))

    # Reading.

    def current_version(self, name: str) -> int:
        return self._existing(name).latest

    def reveal(self, name: str, version: int) -> str:
        """The value of ``name`` at ``version``, decrypted with the acting key
        and checked against the signed digest; registered for scrubbing."""
        secret = self._existing(name)
        entry = secret.at(version)
        if entry is None:
            raise SecretNotFound(
                f"secret {name!r} has no version {version} (versions 1 to {secret.latest})"
            )
        _, value = self._open(secret, entry)
        register_secret(value, f"secret {name} version {version}")
        return value

    def metadata(self, name: str) -> dict[str, Any]:
        """What the ledger says about ``name`` (never its value): current
        version, recipients, who set it when, digest, ttl, removal."""
        _checked_name(name)
        secret = self._find(name)
        if secret is None:
            raise SecretNotFound(f"no secret {name!r} (see 'chassis secret list')")
        return self._describe(secret, self._trust(), datetime.now(UTC))

    def all(self, *, include_removed: bool = False) -> list[dict[str, Any]]:
        """:meth:`metadata` of every secret, by name."""
        trust = self._trust()
        at = datetime.now(UTC)
        found: list[dict[str, Any]] = []
        for row in self.ledger.recorder.select_notifications(
            start=None, limit=1_000_000, topics=[Secret.Set.TOPIC]
        ):
            try:
                secret = self.ledger.load(Secret, UUID(str(row.originator_id)))
            except NotFoundError:
                continue
            if include_removed or not secret.removed:
                found.append(self._describe(secret, trust, at))
        return sorted(found, key=lambda d: str(d["name"]))

    def default_recipients(self) -> list[str]:
        """The key ids a new secret is encrypted to without ``recipients``."""
        return sorted(self._default_keys())

    # Internals.

    def _write(
        self,
        secret: Secret | None,
        name: str,
        value: str,
        keys: dict[str, TrustedKey],
        ttl_s: int | None,
        reason: str,
    ) -> int:
        if ttl_s is not None and not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise SecretInputError(f"ttl {ttl_s}s: expected {MIN_TTL_S} to {MAX_TTL_S} seconds")
        actor = self._actor()
        number = 1 if secret is None else secret.latest + 1
        data_key = os.urandom(DATA_KEY_BYTES)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(
            nonce, check_value(value), associated_data(name, number)
        )
        wraps = {k: wrap(data_key, bytes.fromhex(key.public_key)) for k, key in keys.items()}
        digest = value_digest(data_key, value)
        recipients = sorted(keys)
        if secret is None:
            secret = Secret.new(
                name=name,
                recipients=recipients,
                digest=digest,
                ttl_s=ttl_s,
                reason=reason,
                actor=actor,
            )
        else:
            secret.rotate(
                recipients=recipients, digest=digest, ttl_s=ttl_s, reason=reason, actor=actor
            )
        # The signed event first: the ledger decides which writer gets this
        # version, and only that writer stores its row. A row without its
        # event (a planted one) is replaced; an event without its row (a
        # crash in between) reads as missing until the secret is rotated.
        self.ledger.append(secret)
        with self.tables.transaction(commit=True) as c:
            c.execute(
                "DELETE FROM {chassis_secret_versions} WHERE name = ? AND version = ?",
                (name, number),
            )
            c.execute(
                "INSERT INTO {chassis_secret_versions} "
                "(name, version, nonce, ciphertext, wraps, created) VALUES (?, ?, ?, ?, ?, ?)",
                (name, number, nonce, ciphertext, _wraps_text(wraps), _now_text()),
            )
        return number

    def _set_wraps(self, name: str, number: int, wraps: dict[str, str]) -> None:
        with self.tables.transaction(commit=True) as c:
            c.execute(
                "UPDATE {chassis_secret_versions} SET wraps = ? WHERE name = ? AND version = ?",
                (_wraps_text(wraps), name, number),
            )

    def _stored(self, name: str, number: int) -> StoredVersion | None:
        with self.tables.transaction(commit=False) as c:
            c.execute(
                "SELECT nonce, ciphertext, wraps FROM {chassis_secret_versions} "
                "WHERE name = ? AND version = ?",
                (name, number),
            )
            row = c.fetchone()
        if row is None:
            return None
        try:
            wraps = json.loads(row[2])
        except (TypeError, ValueError):
            wraps = None
        if not isinstance(wraps, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in wraps.items()
        ):
            raise SecretTampered(
                f"secret {name!r} version {number}: its stored wraps are malformed"
            )
        return StoredVersion(nonce=bytes(row[0]), ciphertext=bytes(row[1]), wraps=wraps)

    def _open(self, secret: Secret, entry: SecretVersion) -> tuple[bytes, str]:
        """(data key, value) of one version, for the acting key, checked
        against the signed recipients and digest."""
        name, number = secret.name, entry.number
        where = f"secret {name!r} version {number}"
        keypair = self.keypair
        if keypair is None:
            raise NoRecipientKey(f"{where}: no key selected to decrypt it")
        trust = self._trust()
        if keypair.keyid not in entry.recipients:
            names = ", ".join(_key_name(trust, k) for k in entry.recipients)
            raise NoRecipientKey(
                f"{where}: key {keypair.name} ({keypair.keyid[:16]}) is not a recipient "
                f"(recipients: {names}); one of them can run "
                f"'chassis secret grant {name} {keypair.name}'"
            )
        trusted = trust.keys.get(keypair.keyid)
        if trusted is not None and not trusted.active:
            raise NoRecipientKey(
                f"{where}: key {trusted.name} ({keypair.keyid[:16]}) was revoked from the "
                f"ledger's trust: {trusted.revoked_reason}"
            )
        stored = self._stored(name, number)
        if stored is None:
            raise self._missing(name, number)
        wrapped = stored.wraps.get(keypair.keyid)
        if wrapped is None:
            raise SecretTampered(
                f"{where}: the stored wraps hold none for key {keypair.keyid[:16]}, which the "
                "ledger's signed events name as a recipient"
            )
        try:
            data_key = unwrap(wrapped, keypair)
        except ValueError:
            raise SecretTampered(
                f"{where}: the data key sealed to {keypair.keyid[:16]} does not open"
            ) from None
        try:
            plaintext = AESGCM(data_key).decrypt(
                stored.nonce, stored.ciphertext, associated_data(name, number)
            )
        except (InvalidTag, ValueError):
            raise SecretTampered(
                f"{where}: the stored ciphertext fails its authentication tag (changed, or "
                "moved from another secret or version)"
            ) from None
        try:
            value = plaintext.decode()
        except UnicodeDecodeError:
            value = ""
        if not value or not hmac.compare_digest(value_digest(data_key, value), entry.digest):
            raise SecretTampered(
                f"{where}: the stored ciphertext is not the value whose digest the ledger signed"
            )
        return data_key, value

    def _missing(self, name: str, number: int) -> SecretTampered:
        return SecretTampered(
            f"secret {name!r} version {number}: the ledger records it but no ciphertext is "
            f"stored (deleted, or the command that set it was interrupted); "
            f"'chassis secret rotate {name}' stores a new value"
        )

    def _find(self, name: str) -> Secret | None:
        return self.ledger.find(Secret, Secret.id_for(name))

    def _existing(self, name: str) -> Secret:
        _checked_name(name)
        secret = self._find(name)
        if secret is None:
            raise SecretNotFound(f"no secret {name!r} (see 'chassis secret list')")
        if secret.removed:
            raise SecretNotFound(f"secret {name!r} was removed: {secret.removed_reason}")
        return secret

    def _trust(self) -> TrustState:
        trust = self.ledger.trust()
        if trust is None:
            raise SecretStoreError("this ledger has no root of trust yet (run 'chassis init')")
        return trust

    def _actor(self) -> str:
        if self.ledger.signer is None:
            raise NotAuthorisedError("no signing key selected", reason="unknown-key")
        return self.ledger.signer.keyid

    def _recipient_key(self, ref: str) -> TrustedKey:
        key = self._trust().find(ref)
        if not key.active:
            raise DomainRuleError(
                f"key {key.name} ({key.keyid[:16]}) was revoked from the ledger's trust; "
                "it cannot be a recipient"
            )
        return key

    def _recipient_keys(self, refs: list[str]) -> dict[str, TrustedKey]:
        keys = [self._recipient_key(ref) for ref in refs]
        return {key.keyid: key for key in keys}

    def _default_keys(self) -> dict[str, TrustedKey]:
        keys = {
            k: key
            for k, key in self._trust().keys.items()
            if key.active and DEFAULT_RECIPIENT_ROLE in key.roles
        }
        if not keys:
            raise DomainRuleError("no active trusted key holds 'operator'; name the recipients")
        return keys

    def _describe(self, secret: Secret, trust: TrustState, at: datetime) -> dict[str, Any]:
        current = secret.current
        expires: str | None = None
        if current.ttl_s is not None:
            expires = format_timestamp(
                parse_timestamp(current.set_at) + timedelta(seconds=current.ttl_s)
            )
        return {
            "name": secret.name,
            "version": current.number,
            "recipients": [{"keyid": k, "name": _key_name(trust, k)} for k in current.recipients],
            "set_by": {"keyid": current.set_by, "name": _key_name(trust, current.set_by)},
            "set_at": current.set_at,
            "digest": current.digest,
            "ttl_s": current.ttl_s,
            "expires": expires,
            "expired": expires is not None and at >= parse_timestamp(expires),
            "reason": current.reason,
            "removed": secret.removed,
            "removed_reason": secret.removed_reason,
        }


def _checked_name(name: str) -> str:
    try:
        return check_secret_name(name)
    except DomainRuleError as e:
        raise SecretInputError(str(e)) from None


def _check_reason(value: str, reason: str) -> None:
    """Refuse a reason (signed, recorded for ever) that holds the value."""
    core = value.strip()
    if len(core) >= MIN_WORD_CHARS and core in reason:
        raise SecretInputError("the reason contains the secret's value; nothing was recorded")


def _key_name(trust: TrustState, keyid: str) -> str:
    key = trust.keys.get(keyid)
    return key.name if key is not None else keyid[:16]


def _wraps_text(wraps: dict[str, str]) -> str:
    return json.dumps(wraps, sort_keys=True, separators=(",", ":"))


def _now_text() -> str:
    return format_timestamp(datetime.now(UTC))
