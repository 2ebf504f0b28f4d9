"""Trust rules, as the aggregate enforces them before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.errors import DomainRuleError, NotAuthorisedError, UnknownKeyError
from ledger.keys import KeyPair, generate_keypair
from ledger.trust import Role, Trust, parse_roles


@pytest.fixture
def trust(root_key: KeyPair) -> Trust:
    return Trust.establish(
        keyid=root_key.keyid, name="root", public_key=root_key.public_key, ledger_name="t"
    )


def test_root_holds_every_role(trust: Trust, root_key: KeyPair) -> None:
    assert trust.root_keyid == root_key.keyid
    for role in Role:
        trust.authorise(root_key.keyid, role)


def test_roles_are_checked(trust: Trust, root_key: KeyPair, isolation: Path) -> None:
    ops = generate_keypair(isolation, "ops")
    trust.trust_key(actor=root_key.keyid, name="ops", public_key=ops.public_key, roles=["operator"])
    trust.authorise(ops.keyid, "operator")
    with pytest.raises(NotAuthorisedError, match="does not hold role 'admin'") as caught:
        trust.authorise(ops.keyid, "admin")
    assert caught.value.reason == "role-not-allowed"


def test_revoked_and_unknown_keys(trust: Trust, root_key: KeyPair, isolation: Path) -> None:
    ops = generate_keypair(isolation, "ops")
    trust.trust_key(actor=root_key.keyid, name="ops", public_key=ops.public_key, roles=["operator"])
    trust.revoke_key(actor=root_key.keyid, keyid=ops.keyid, reason="rotated")
    with pytest.raises(NotAuthorisedError, match="revoked: rotated") as caught:
        trust.authorise(ops.keyid, "operator")
    assert caught.value.reason == "revoked-key"
    with pytest.raises(NotAuthorisedError) as unknown:
        trust.authorise("ab" * 32, "operator")
    assert unknown.value.reason == "unknown-key"


def test_domain_rules(trust: Trust, root_key: KeyPair, isolation: Path) -> None:
    with pytest.raises(DomainRuleError, match="already trusted"):
        trust.trust_key(
            actor=root_key.keyid, name="again", public_key=root_key.public_key, roles=["admin"]
        )
    with pytest.raises(DomainRuleError, match="last active admin"):
        trust.revoke_key(actor=root_key.keyid, keyid=root_key.keyid, reason="oops")
    with pytest.raises(DomainRuleError, match="roles 'root'"):
        parse_roles("root")
    with pytest.raises(UnknownKeyError):
        trust.find("nobody")
    assert trust.find(root_key.keyid[:8]).name == "root"
    assert trust.find("root").keyid == root_key.keyid
    assert trust.version == 1 and len(trust.pending_events) == 1
