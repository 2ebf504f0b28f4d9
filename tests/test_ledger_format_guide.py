"""guides/ledger-format.md is exact: its worked example is recomputed from the
text alone, and every registered topic is documented with its role."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.canonical import GENESIS
from ledger.events import registered_topics
from ledger.keys import KeyPair
from ledger.mapper import seal
from ledger.trust import Trust
from proofs.chain import verify_ledger

GUIDE = (Path(__file__).resolve().parents[1] / "guides" / "ledger-format.md").read_text()
EXAMPLE = GUIDE[GUIDE.index("## 9. Worked example") :]


def labelled(label: str) -> str:
    match = re.search(rf"^{label}:\s+([0-9a-f]+)$", EXAMPLE, re.MULTILINE)
    assert match, label
    return match.group(1)


def json_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)\n```", EXAMPLE, re.DOTALL)


def test_worked_example_recomputes_from_the_text() -> None:
    body_text, state_text = json_blocks()
    body = body_text.encode()
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert public.hex() == labelled("public key")
    assert hashlib.sha256(public).hexdigest() == labelled("key id")
    assert f"one line, {len(body)} bytes" in EXAMPLE

    # Canonical form per §3, with nothing but the standard library.
    reencoded = json.dumps(
        json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert reencoded.encode() == body

    digest = hashlib.sha256(b"chassis.ledger.event.v1\x00" + body).digest()
    assert digest.hex() == labelled("digest")
    assert private.sign(digest).hex() == labelled("signature")
    expected_state = (
        '{"digest":"'
        + digest.hex()
        + '","event":'
        + body_text
        + ',"sig":"'
        + base64.b64encode(private.sign(digest)).decode()
        + '"}'
    )
    assert state_text == expected_state


def test_worked_example_is_what_chassis_writes_and_accepts() -> None:
    body_text, state_text = json_blocks()
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key = KeyPair("example-root", private, public, hashlib.sha256(public).hexdigest())
    event = Trust.Established(
        originator_id=Trust.ID,
        originator_version=1,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        prev=GENESIS,
        keyid=key.keyid,
        name="example-root",
        public_key=public.hex(),
        roles=["admin", "approver", "checkpoint", "operator"],
        ledger_name="example",
    )
    assert event.canonical() == body_text.encode()
    assert seal(event, key) == state_text.encode()

    row = (
        1,
        UUID("caaee541-c4de-5abf-8526-423b5d8c675d"),
        1,
        "chassis.trust.established.v1",
        state_text.encode(),
    )
    assert verify_ledger([row], pinned_root=key.keyid).root_keyid == key.keyid


def test_every_topic_is_documented_with_its_role() -> None:
    for topic, event_type in registered_topics().items():
        if topic.startswith("test.") or topic.startswith("bench."):
            continue
        row = re.search(rf"^\| `{re.escape(topic)}` \| (\w+)", GUIDE, re.MULTILINE)
        assert row, f"{topic} is not in guides/ledger-format.md §6"
        assert row.group(1) == event_type.ROLE, topic


def test_trust_id_and_namespace_in_the_guide() -> None:
    assert str(Trust.ID) in GUIDE
    from ledger.aggregate import CHASSIS_NAMESPACE

    assert str(CHASSIS_NAMESPACE) in GUIDE


def guide_topic_table() -> dict[str, dict[str, object]]:
    """The JSON block of §6.4, as an independent verifier would read it."""
    section = GUIDE[GUIDE.index("### 6.4 Topic schemas") : GUIDE.index("## 7. Trust rules")]
    (block,) = re.findall(r"```json\n(.*?)\n```", section, re.DOTALL)
    table: dict[str, dict[str, object]] = json.loads(block)
    return table


def test_topic_schemas_in_the_guide_are_the_code() -> None:
    from ledger.schema import topic_table

    assert guide_topic_table() == topic_table()


def test_topics_belong_to_the_kind_their_name_says() -> None:
    """§6: the second part of a chassis topic is the kind it applies to."""
    for topic, entry in guide_topic_table().items():
        assert topic.split(".")[1] == entry["kind"], topic
