"""The secret store (issue 16, items 1 and 5): values encrypted to recipient
keys, the ciphertext beside the ledger, only metadata in signed events.

Real ledgers throughout: SQLite and a PostgreSQL schema (``ledger_url``),
the real CLI for what an operator runs, and direct writes to the side table
for what an attacker with database access (and no key) could do.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.public
import pytest
from click.testing import Result
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chassis.secret_store import (
    NoRecipientKey,
    SecretInputError,
    SecretNotFound,
    SecretStore,
    SecretTampered,
    associated_data,
    unwrap,
    value_digest,
    x25519_public,
)
from ledger.application import Ledger
from ledger.errors import DomainRuleError
from ledger.keys import KeyPair, generate_keypair, load_keypair
from ledger.secrets import Secret
from ledger.storage import StorageConfig, open_ledger
from ledger.tables import SideTables
from ledger.trust import Role, Trust
from tests.conftest import Runner
from tests.rawstore import RawStore

VALUE = "correct-horse-battery-staple-7f3a"
OTHER = "another-planted-value-91c2e4"
COLUMNS = "name, version, nonce, ciphertext, wraps, created"


class SideRows:
    """``chassis_secret_versions`` read and written directly."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        ledger = open_ledger(StorageConfig.from_url(self.url), None)
        try:
            with SideTables(ledger).transaction(commit=True) as c:
                c.execute(sql, params)
                if sql.startswith("SELECT"):
                    return [tuple(r) for r in c.fetchall()]
                return []
        finally:
            ledger.close()

    def rows(self) -> list[tuple[Any, ...]]:
        return self._run(
            f"SELECT {COLUMNS} FROM {{chassis_secret_versions}} ORDER BY name, version"
        )

    def row(self, name: str, version: int) -> dict[str, Any]:
        (found,) = [r for r in self.rows() if (r[0], r[1]) == (name, version)]
        return dict(zip(COLUMNS.split(", "), found, strict=True))

    def put(self, name: str, version: int, **changes: Any) -> None:
        """Overwrite columns of one row (``wraps`` as a dict)."""
        for column, value in changes.items():
            if column == "wraps":
                value = json.dumps(value)
            self._run(
                f"UPDATE {{chassis_secret_versions}} SET {column} = ? "
                "WHERE name = ? AND version = ?",
                (value, name, version),
            )


def planted_forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def flipped(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# The store on each backend.


@pytest.fixture
def operator_key(isolation: Path) -> KeyPair:
    return generate_keypair(isolation, "ops")


@pytest.fixture
def approver_key(isolation: Path) -> KeyPair:
    return generate_keypair(isolation, "approver")


@pytest.fixture
def trusted(ledger: Ledger, operator_key: KeyPair, approver_key: KeyPair) -> Ledger:
    """``ledger`` trusting ``ops`` (operator) and ``approver`` (approver) besides its root."""

    def add(trust: Trust) -> None:
        trust.trust_key(
            actor=ledger.signer.keyid,  # type: ignore[union-attr]
            name="ops",
            public_key=operator_key.public_key,
            roles=[Role.OPERATOR],
        )
        trust.trust_key(
            actor=ledger.signer.keyid,  # type: ignore[union-attr]
            name="approver",
            public_key=approver_key.public_key,
            roles=[Role.APPROVER],
        )

    ledger.update(Trust, Trust.ID, add)
    return ledger


@contextmanager
def as_key(ledger: Ledger, keypair: KeyPair) -> Iterator[SecretStore]:
    """The store as another key, on its own connection to the same ledger."""
    opened = open_ledger(ledger.config, keypair)
    try:
        yield SecretStore(opened, keypair)
    finally:
        opened.close()


def test_round_trip_rotate_and_metadata(
    trusted: Ledger, root_key: KeyPair, ledger_url: str
) -> None:
    store = SecretStore(trusted, root_key)
    assert store.set("db-password", VALUE, recipients=None, ttl_s=3600, reason="first") == 1
    assert store.reveal("db-password", 1) == VALUE
    assert store.current_version("db-password") == 1
    # Default recipients: the active keys holding operator (root holds every role).
    meta = store.metadata("db-password")
    assert sorted(r["name"] for r in meta["recipients"]) == ["ops", "root"]
    assert meta["version"] == 1 and meta["ttl_s"] == 3600 and not meta["expired"]
    assert meta["set_by"]["keyid"] == root_key.keyid and meta["reason"] == "first"
    assert VALUE not in json.dumps(meta)

    assert store.rotate("db-password", OTHER, reason="quarterly") == 2
    assert store.reveal("db-password", 2) == OTHER
    assert store.reveal("db-password", 1) == VALUE, "older versions stay readable"
    meta = store.metadata("db-password")
    assert meta["version"] == 2 and meta["ttl_s"] == 3600, "rotate keeps the ttl"
    secret = trusted.load(Secret, Secret.id_for("db-password"))
    assert [v.number for v in secret.versions] == [1, 2]
    assert [m["name"] for m in store.all()] == ["db-password"]

    with pytest.raises(SecretNotFound):
        store.reveal("db-password", 3)
    with pytest.raises(SecretNotFound):
        store.reveal("nothing-here", 1)
    with pytest.raises(DomainRuleError):  # set refuses an existing secret: rotate it
        store.set("db-password", VALUE, recipients=None, ttl_s=None, reason="")
    with pytest.raises(SecretInputError):
        store.set("bad/name", VALUE, recipients=None, ttl_s=None, reason="")
    with pytest.raises(SecretInputError):
        store.set("empty", "  \n", recipients=None, ttl_s=None, reason="")
    with pytest.raises(SecretInputError):  # the reason is signed for ever
        store.set("leaky", VALUE, recipients=None, ttl_s=None, reason=f"it is {VALUE}")

    store.remove("db-password", "retired")
    with pytest.raises(SecretNotFound):
        store.reveal("db-password", 2)
    assert store.all() == [] and store.all(include_removed=True)[0]["removed"]
    assert SideRows(ledger_url).rows() == [], "removal deletes the ciphertexts"
    assert store.set("db-password", OTHER, recipients=["root"], ttl_s=None, reason="back") == 3


def test_the_value_is_in_no_ledger_row_and_only_encrypted_beside_it(
    trusted: Ledger, root_key: KeyPair, operator_key: KeyPair, ledger_url: str
) -> None:
    store = SecretStore(trusted, root_key)
    store.set("api-token", VALUE, recipients=["root"], ttl_s=None, reason="r")
    store.grant("api-token", "ops", "on call")
    store.rotate("api-token", OTHER, reason="rotate")
    store.revoke_recipient("api-token", "ops", "left")

    rows = RawStore(ledger_url).rows()
    topics = [r.topic for r in rows if r.topic.startswith("chassis.secret.")]
    assert topics == [
        "chassis.secret.set.v1",
        "chassis.secret.recipients-changed.v1",
        "chassis.secret.rotated.v1",
        "chassis.secret.recipients-changed.v1",  # revoked from version 1
        "chassis.secret.recipients-changed.v1",  # and from version 2
    ]
    side = SideRows(ledger_url).rows()
    assert [(r[0], r[1]) for r in side] == [("api-token", 1), ("api-token", 2)]
    for value in (VALUE, OTHER):
        for form in planted_forms(value):
            for row in rows:
                assert form not in row.state, (row.topic, form)
            for stored in side:
                for cell in stored:
                    data = cell if isinstance(cell, bytes) else str(cell).encode()
                    assert form not in data, form
    for stored, value in zip(side, (VALUE, OTHER), strict=True):
        # A 12-byte nonce; the ciphertext is the value's length plus the 16-byte tag.
        assert len(stored[2]) == 12 and len(stored[3]) == len(value.encode()) + 16
    # The ledger holds the digest, which any recipient can recompute.
    version_1 = SideRows(ledger_url).row("api-token", 1)
    data_key = unwrap(json.loads(version_1["wraps"])[root_key.keyid], root_key)
    secret = trusted.load(Secret, Secret.id_for("api-token"))
    assert secret.at(1).digest == value_digest(data_key, VALUE)  # type: ignore[union-attr]


def test_an_independent_reader_decrypts_with_the_documented_primitives(
    trusted: Ledger, root_key: KeyPair, ledger_url: str
) -> None:
    """guides/secrets.md, "Formats": libsodium and AES-GCM, nothing of ours."""
    import nacl.bindings
    from cryptography.hazmat.primitives import serialization

    SecretStore(trusted, root_key).set("db", VALUE, recipients=None, ttl_s=None, reason="")
    row = SideRows(ledger_url).row("db", 1)
    seed = root_key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    x_private = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(seed + root_key.public_key)
    sealed = base64.b64decode(json.loads(row["wraps"])[root_key.keyid])
    assert len(sealed) == 80
    data_key = nacl.public.SealedBox(nacl.public.PrivateKey(x_private)).decrypt(sealed)
    ad = b"chassis.secret.v1\x00db\x001"
    assert AESGCM(data_key).decrypt(row["nonce"], row["ciphertext"], ad) == VALUE.encode()


def test_a_flipped_byte_does_not_decrypt(
    trusted: Ledger, root_key: KeyPair, ledger_url: str
) -> None:
    store = SecretStore(trusted, root_key)
    store.set("db", VALUE, recipients=None, ttl_s=None, reason="")
    side = SideRows(ledger_url)
    original = side.row("db", 1)
    for column in ("ciphertext", "nonce"):
        side.put("db", 1, **{column: flipped(original[column], 5)})
        with pytest.raises(SecretTampered, match="authentication tag") as raised:
            store.reveal("db", 1)
        assert raised.value.exit_code == 8
        side.put("db", 1, **{column: original[column]})
    wraps = json.loads(original["wraps"])
    sealed = base64.b64decode(wraps[root_key.keyid])
    side.put("db", 1, wraps={**wraps, root_key.keyid: base64.b64encode(flipped(sealed)).decode()})
    with pytest.raises(SecretTampered, match="does not open"):
        store.reveal("db", 1)
    side.put("db", 1, wraps={k: v for k, v in wraps.items() if k != root_key.keyid})
    with pytest.raises(SecretTampered, match="hold none for key"):
        store.reveal("db", 1)
    side.put("db", 1, wraps=wraps)
    assert store.reveal("db", 1) == VALUE


def test_a_ciphertext_moved_to_another_name_or_version_does_not_decrypt(
    trusted: Ledger, root_key: KeyPair, ledger_url: str
) -> None:
    store = SecretStore(trusted, root_key)
    store.set("db", VALUE, recipients=["root"], ttl_s=None, reason="")
    store.set("api", OTHER, recipients=["root"], ttl_s=None, reason="")
    store.rotate("db", OTHER, reason="")
    side = SideRows(ledger_url)
    db_1 = side.row("db", 1)
    moved = {k: db_1[k] for k in ("nonce", "ciphertext")}
    # The same recipients, so the wraps open: the associated data refuses it.
    side.put("api", 1, wraps=json.loads(db_1["wraps"]), **moved)
    with pytest.raises(SecretTampered, match="moved from another secret or version"):
        store.reveal("api", 1)
    side.put("db", 2, wraps=json.loads(db_1["wraps"]), **moved)
    with pytest.raises(SecretTampered, match="moved from another secret or version"):
        store.reveal("db", 2)
    assert store.reveal("db", 1) == VALUE


def test_a_planted_row_sealed_to_the_recipient_is_refused_by_the_signed_digest(
    trusted: Ledger, root_key: KeyPair, ledger_url: str
) -> None:
    """Anyone can seal a box to a public key: the attacker writes a valid
    ciphertext of their own value, right name and version included. Only
    the signed digest tells it apart."""
    store = SecretStore(trusted, root_key)
    store.set("db", VALUE, recipients=["root"], ttl_s=None, reason="")
    data_key, nonce = os.urandom(32), os.urandom(12)
    ciphertext = AESGCM(data_key).encrypt(nonce, b"attacker-chosen-value", associated_data("db", 1))
    sealed = nacl.public.SealedBox(x25519_public(root_key.public_key)).encrypt(data_key)
    SideRows(ledger_url).put(
        "db",
        1,
        nonce=nonce,
        ciphertext=ciphertext,
        wraps={root_key.keyid: base64.b64encode(sealed).decode()},
    )
    with pytest.raises(SecretTampered, match="not the value whose digest the ledger signed"):
        store.reveal("db", 1)


def test_only_recipients_decrypt(
    trusted: Ledger, root_key: KeyPair, operator_key: KeyPair, approver_key: KeyPair
) -> None:
    SecretStore(trusted, root_key).set("db", VALUE, recipients=["root"], ttl_s=None, reason="")
    with as_key(trusted, operator_key) as store:
        with pytest.raises(NoRecipientKey, match="is not a recipient") as raised:
            store.reveal("db", 1)
        assert raised.value.exit_code == 5
        with pytest.raises(NoRecipientKey):  # granting needs the data key
            store.grant("db", "ops", "")
    SecretStore(trusted, root_key).grant("db", "approver", "reviews config")
    with as_key(trusted, approver_key) as store:  # any role decrypts once a recipient
        assert store.reveal("db", 1) == VALUE
    with pytest.raises(NoRecipientKey):
        SecretStore(trusted, None).reveal("db", 1)


def test_revoking_a_recipient(
    trusted: Ledger, root_key: KeyPair, operator_key: KeyPair, ledger_url: str
) -> None:
    store = SecretStore(trusted, root_key)
    store.set("db", VALUE, recipients=["root", "ops"], ttl_s=None, reason="")
    store.rotate("db", OTHER, reason="")
    with as_key(trusted, operator_key) as ops:
        assert ops.reveal("db", 2) == OTHER
    store.revoke_recipient("db", "ops", "left the team")
    assert [r["name"] for r in store.metadata("db")["recipients"]] == ["root"]
    assert operator_key.keyid not in SideRows(ledger_url).row("db", 2)["wraps"]
    side = SideRows(ledger_url)
    for number in (1, 2):  # revoked from every version, not only the current one
        assert operator_key.keyid not in side.row("db", number)["wraps"]
        assert trusted.load(Secret, Secret.id_for("db")).at(number).recipients == [  # type: ignore[union-attr]
            root_key.keyid
        ]
    with as_key(trusted, operator_key) as ops:
        for number in (1, 2):
            with pytest.raises(NoRecipientKey):
                ops.reveal("db", number)
    # Putting a revoked wrap back does not help: the signed recipients decide.
    sealed = base64.b64encode(
        nacl.public.SealedBox(x25519_public(operator_key.public_key)).encrypt(
            unwrap(json.loads(side.row("db", 2)["wraps"])[root_key.keyid], root_key)
        )
    ).decode()
    side.put("db", 2, wraps={**json.loads(side.row("db", 2)["wraps"]), operator_key.keyid: sealed})
    with as_key(trusted, operator_key) as ops, pytest.raises(NoRecipientKey):
        ops.reveal("db", 2)
    with pytest.raises(DomainRuleError, match="last recipient"):
        store.revoke_recipient("db", "root", "no")
    # Rotating keeps the current recipients: ops is not given version 3.
    store.rotate("db", VALUE + "-3", reason="after ops left")
    assert [r["name"] for r in store.metadata("db")["recipients"]] == ["root"]


def recipient_events(url: str, name: str) -> list[dict[str, Any]]:
    """The payloads of ``name``'s signed ``recipients-changed`` records, in order."""
    found = []
    for row in RawStore(url).rows():
        if row.topic == "chassis.secret.recipients-changed.v1":
            event = json.loads(row.state)["event"]
            if event["id"] == str(Secret.id_for(name)):
                found.append(event["payload"])
    return found


def test_a_grant_after_a_rotation_wraps_every_version(
    trusted: Ledger, root_key: KeyPair, operator_key: KeyPair, ledger_url: str
) -> None:
    """Issue 16: a key granted after a rotation can read (and so roll back
    to) the older versions too: each version's row gets its wrap, and each
    version's signed recipients name it."""
    store = SecretStore(trusted, root_key)
    store.set("db", VALUE, recipients=["root"], ttl_s=None, reason="")
    store.rotate("db", OTHER, reason="")
    change = store.grant("db", "ops", "joins on-call")
    assert change.versions == [1, 2] and change.warnings("root") == []
    assert [(e["version"], e["recipients"]) for e in recipient_events(ledger_url, "db")] == [
        (1, sorted([root_key.keyid, operator_key.keyid])),
        (2, sorted([root_key.keyid, operator_key.keyid])),
    ]
    for number in (1, 2):
        assert operator_key.keyid in json.loads(SideRows(ledger_url).row("db", number)["wraps"])
    with as_key(trusted, operator_key) as ops:
        assert ops.reveal("db", 1) == VALUE
        assert ops.reveal("db", 2) == OTHER
    with pytest.raises(DomainRuleError, match="already a recipient of every version"):
        store.grant("db", "ops", "")
    # Every version still opens for the granter, and the ledger verifies.
    assert store.reveal("db", 1) == VALUE and store.reveal("db", 2) == OTHER


def test_a_grant_skips_the_versions_the_granter_cannot_open(
    trusted: Ledger,
    root_key: KeyPair,
    operator_key: KeyPair,
    approver_key: KeyPair,
    ledger_url: str,
) -> None:
    store = SecretStore(trusted, root_key)
    store.set("api", VALUE, recipients=["ops"], ttl_s=None, reason="")
    store.rotate("api", OTHER, recipients=["root", "ops"], reason="")
    change = store.grant("api", "approver", "reviews")
    assert change.versions == [2] and change.not_recipient == [1]
    (warning,) = change.warnings("root")
    assert "version 1 not granted to approver: root is not a recipient" in warning, warning
    assert [e["version"] for e in recipient_events(ledger_url, "api")] == [2]
    with as_key(trusted, approver_key) as approver:
        assert approver.reveal("api", 2) == OTHER
        with pytest.raises(NoRecipientKey, match="is not a recipient"):
            approver.reveal("api", 1)
    # ops, a recipient of version 1, grants the rest.
    with as_key(trusted, operator_key) as ops:
        assert ops.grant("api", "approver", "").versions == [1]
    with as_key(trusted, approver_key) as approver:
        assert approver.reveal("api", 1) == VALUE

    # A granter that can open none of the missing versions: exit 5, nothing recorded.
    store.set("solo", VALUE, recipients=["ops"], ttl_s=None, reason="")
    before = len(RawStore(ledger_url).rows())
    with pytest.raises(NoRecipientKey, match="is not a recipient of version 1") as raised:
        store.grant("solo", "approver", "")
    assert raised.value.exit_code == 5
    assert len(RawStore(ledger_url).rows()) == before


def test_a_tampered_older_version_stops_the_grant_before_anything_is_recorded(
    trusted: Ledger, root_key: KeyPair, operator_key: KeyPair, ledger_url: str
) -> None:
    store = SecretStore(trusted, root_key)
    store.set("db", VALUE, recipients=["root"], ttl_s=None, reason="")
    store.rotate("db", OTHER, reason="")
    side = SideRows(ledger_url)
    original = side.row("db", 1)
    side.put("db", 1, ciphertext=flipped(original["ciphertext"], 2))
    before = len(RawStore(ledger_url).rows())
    with pytest.raises(SecretTampered, match="version 1"):
        store.grant("db", "ops", "")
    assert len(RawStore(ledger_url).rows()) == before
    assert operator_key.keyid not in json.loads(side.row("db", 2)["wraps"])


def test_versions_from_before_a_removal_are_not_granted(
    trusted: Ledger, root_key: KeyPair, operator_key: KeyPair, ledger_url: str
) -> None:
    store = SecretStore(trusted, root_key)
    store.set("db", VALUE, recipients=["root"], ttl_s=None, reason="")
    store.remove("db", "retired")
    store.set("db", OTHER, recipients=["root"], ttl_s=None, reason="back")
    assert store.grant("db", "ops", "").versions == [2]
    assert [e["version"] for e in recipient_events(ledger_url, "db")] == [2]


# The CLI.


def sqlite_url(workspace: Path) -> str:
    return f"sqlite:///{workspace / '.chassis' / 'ledger.db'}"


def succeeded(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}{result.stdout}"
    return result


def one_error_line(result: Result, code: int, *words: str) -> str:
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}{result.stdout}"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("chassis: error: "), line
    for word in words:
        assert word in line, line
    return line


def test_cli_set_show_list_never_print_the_value(
    run: Runner, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = run(
        "secret", "set", "db-password", "--ttl", "30d", "--reason", "new db", input=VALUE + "\n"
    )
    assert stored.exit_code == 0, stored.stderr
    assert stored.stdout.strip() == "secret db-password version 1 stored"
    source = tmp_path / "token.txt"
    source.write_text(OTHER + "\n")
    run.ok("secret", "set", "api-token", "--from-file", str(source), "--recipient", "shop-root")
    monkeypatch.setenv("NEW_DB_PASSWORD", OTHER + "-2")
    rotated = run.ok("secret", "rotate", "db-password", "--from-env", "NEW_DB_PASSWORD", "--json")
    assert json.loads(rotated.stdout)["version"] == 2

    shown = json.loads(run.ok("secret", "show", "db-password", "--json").stdout)
    assert set(shown) == {
        "name", "version", "recipients", "set_by", "set_at", "digest", "ttl_s", "expires",
        "expired", "reason", "removed", "removed_reason",
    }  # fmt: skip
    assert shown["ttl_s"] == 30 * 86400 and shown["recipients"][0]["name"] == "shop-root"
    listed = json.loads(run.ok("secret", "list", "--json").stdout)
    assert [d["name"] for d in listed] == ["api-token", "db-password"]
    outputs = [
        stored,
        rotated,
        run.ok("secret", "show", "db-password"),
        run.ok("secret", "list"),
        run.ok("ledger", "log", "--json"),
        run.ok("secret", "verify", "db-password"),
        run.ok("secret", "verify", "db-password", "--version", "1"),
    ]
    for result in outputs:
        for value in (VALUE, OTHER):
            assert value not in result.stdout + result.stderr
    assert "ttl         30d" in outputs[2].stdout
    assert "ok" in outputs[-1].stdout

    one_error_line(run("secret", "set", "empty", input="\n"), 2, "empty")
    one_error_line(run("secret", "set", "x", "--from-env", "NOT_SET_ANYWHERE"), 3, "not set")
    one_error_line(run("secret", "set", "db-password", input=VALUE), 9, "rotate")
    one_error_line(run("secret", "set", "y", "--ttl", "soon", input=VALUE), 2, "--ttl")
    one_error_line(run("secret", "show", "nope"), 10, "no secret 'nope'")
    one_error_line(run("secret", "set", "z", "--recipient", "nobody", input=VALUE), 5, "nobody")
    run.ok("ledger", "verify")


def test_cli_tampered_and_moved_ciphertext_exit_8(run: Runner, workspace: Path) -> None:
    succeeded(run("secret", "set", "db", input=VALUE))
    succeeded(run("secret", "set", "api", input=OTHER))
    side = SideRows(sqlite_url(workspace))
    original = side.row("db", 1)
    side.put("db", 1, ciphertext=flipped(original["ciphertext"], 3))
    one_error_line(run("secret", "verify", "db"), 8, "authentication tag")
    run.ok("key", "new", "ci", "--roles", "operator")
    one_error_line(run("secret", "grant", "db", "ci"), 8, "authentication tag")
    side.put("db", 1, ciphertext=original["ciphertext"])
    run.ok("secret", "verify", "db")

    api = side.row("api", 1)
    side.put("db", 1, nonce=api["nonce"], ciphertext=api["ciphertext"])
    one_error_line(run("secret", "verify", "db"), 8, "moved from another secret or version")
    run.ok("ledger", "verify")  # the ledger itself is intact: the side table is not evidence


def test_cli_a_key_that_is_not_a_recipient_exits_5(run: Runner, workspace: Path) -> None:
    run.ok("key", "new", "ci", "--roles", "operator")
    succeeded(run("secret", "set", "db", "--recipient", "shop-root", input=VALUE))
    one_error_line(run("--key", "ci", "secret", "verify", "db"), 5, "not a recipient")
    one_error_line(run("--key", "ci", "secret", "grant", "db", "ci"), 5, "not a recipient")
    run.ok("secret", "grant", "db", "ci", "--reason", "deploys")
    run.ok("--key", "ci", "secret", "verify", "db")
    run.ok("secret", "revoke-recipient", "db", "ci", "--reason", "retired")
    one_error_line(run("--key", "ci", "secret", "verify", "db"), 5, "not a recipient")
    run.ok("secret", "rm", "db", "--reason", "gone")
    one_error_line(run("secret", "verify", "db"), 10, "removed")
    run.ok("ledger", "verify")


def test_cli_grant_names_the_versions_and_warns_once_about_the_rest(
    run: Runner, workspace: Path
) -> None:
    run.ok("key", "new", "ci", "--roles", "operator")
    run.ok("key", "new", "bob", "--roles", "operator")
    succeeded(run("secret", "set", "db", "--recipient", "ci", input=VALUE))
    both = ("--recipient", "shop-root", "--recipient", "ci")
    succeeded(run("--key", "ci", "secret", "rotate", "db", *both, input=OTHER))
    succeeded(run("--key", "ci", "secret", "rotate", "db", input=OTHER + "-3"))
    granted = run.ok("secret", "grant", "db", "bob", "--reason", "on call")
    assert granted.stdout.strip() == "secret db: bob is now a recipient of versions 2, 3"
    (warning,) = granted.stderr.strip().splitlines()
    assert warning.startswith("warning: secret db: version 1 not granted to bob: "), warning
    assert "shop-root is not a recipient of it" in warning, warning
    run.ok("--key", "bob", "secret", "verify", "db", "--version", "2")
    one_error_line(run("--key", "bob", "secret", "verify", "db", "--version", "1"), 5, "bob")
    assert run.ok("--key", "ci", "secret", "grant", "db", "bob").stdout.strip() == (
        "secret db: bob is now a recipient of version 1"
    )
    run.ok("--key", "bob", "secret", "verify", "db", "--version", "1")
    one_error_line(run("secret", "grant", "db", "bob"), 9, "already a recipient of every")

    revoked = run.ok("secret", "revoke-recipient", "db", "bob", "--reason", "left", "--json")
    assert json.loads(revoked.stdout)["versions"] == [1, 2, 3]
    for number in ("1", "2", "3"):
        one_error_line(run("--key", "bob", "secret", "verify", "db", "--version", number), 5, "bob")
    for result in (granted, revoked):
        for value in (VALUE, OTHER):
            assert value not in result.stdout + result.stderr
    run.ok("ledger", "verify")


# Two operators, two workspaces, one ledger.


@dataclass(frozen=True)
class Team:
    alice: Path
    bob: Path
    url: str
    run: Runner

    def __call__(self, who: Path, *args: str, input: str | None = None) -> Result:
        return self.run("--workspace", str(who), *args, input=input)

    def ok(self, who: Path, *args: str, input: str | None = None) -> Result:
        result = self(who, *args, input=input)
        assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}{result.stdout}"
        return result


@pytest.fixture
def team(run: Runner, tmp_path: Path, ledger_url: str) -> Team:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    run.ok("init", str(alice), "--name", "lab", "--ledger", ledger_url)
    run.ok("--workspace", str(alice), "key", "new", "bob", "--roles", "operator")
    joined = run.ok("--key", "bob", "init", str(bob), "--ledger", ledger_url, "--json")
    assert json.loads(joined.stdout)["joined_existing_ledger"] is True
    return Team(alice, bob, ledger_url, run)


def test_two_operators_share_secrets_on_one_ledger(team: Team) -> None:
    # Alice's secret, to both of them (the default: every operator key).
    team.ok(team.alice, "secret", "set", "db", input=VALUE)
    team.ok(team.bob, "secret", "verify", "db")
    # Bob's, to both of them by name.
    team.ok(team.bob, "secret", "set", "api", "--recipient", "lab-root", "--recipient", "bob",
            input=OTHER)  # fmt: skip
    team.ok(team.alice, "secret", "verify", "api")
    shown = json.loads(team.ok(team.alice, "secret", "show", "api", "--json").stdout)
    assert shown["set_by"]["name"] == "bob"
    assert sorted(r["name"] for r in shown["recipients"]) == ["bob", "lab-root"]

    # Bob can be taken off the current version; it no longer opens for him.
    team.ok(team.alice, "secret", "revoke-recipient", "db", "bob", "--reason", "rotation duty")
    one_error_line(team(team.bob, "secret", "verify", "db"), 5, "not a recipient")
    team.ok(team.alice, "secret", "verify", "db")
    team.ok(team.alice, "secret", "grant", "db", "bob", "--reason", "back on duty")
    team.ok(team.bob, "secret", "verify", "db")

    # Through the API, as a deploy reads it: each with their own key.
    keys = Path(os.environ["CHASSIS_KEYS_DIR"])
    for name in ("lab-root", "bob"):
        keypair = load_keypair(keys / f"{name}.key")
        ledger = open_ledger(StorageConfig.from_url(team.url), None)
        try:
            store = SecretStore(ledger, keypair)
            assert store.reveal("db", store.current_version("db")) == VALUE
            assert store.reveal("api", 1) == OTHER
        finally:
            ledger.close()
    for value in (VALUE, OTHER):
        for row in RawStore(team.url).rows():
            assert value.encode() not in row.state
    team.ok(team.bob, "ledger", "verify")
