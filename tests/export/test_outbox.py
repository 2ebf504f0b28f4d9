"""The outbox and delivery on both ledger backends, against the real receiver
process and real files: idempotent queueing, order, backoff while an endpoint
is down, refusals that end as failed, claims, crash-safe file appends."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from chassis.export import export_after
from chassis.export.delivery import (
    MAX_ATTEMPTS,
    DestinationError,
    deliver,
    parse_destination,
)
from chassis.export.outbox import Outbox, line_of, now, stamp
from chassis.receipts import ReceiptStore, StoredReceipt
from chassis.stack.schema import ExportSpec
from chassis.stack.spec import StackError, validate_stack
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.canonical import canonical_json
from ledger.keys import KeyPair
from proofs.dsse import PAYLOAD_TYPE_INTOTO, envelope_digest, sign_envelope
from proofs.intoto import RECEIPT_PREDICATE, statement, statement_bytes, subject
from tests.export import REPO, Receiver, free_port

RELEASE = "ab" * 32


def receipts(signer: KeyPair, count: int, first_seq: int = 1) -> list[StoredReceipt]:
    """Signed receipt records of the export shape, one per seq."""
    made = []
    for seq in range(first_seq, first_seq + count):
        body = statement([subject("shop", RELEASE)], RECEIPT_PREDICATE, {"n": seq})
        envelope = sign_envelope(statement_bytes(body), PAYLOAD_TYPE_INTOTO, signer)
        digest = envelope_digest(envelope)
        record: dict[str, Any] = {
            "receipt_digest": digest,
            "envelope": envelope,
            "statement": body,
            "operation": "deploy",
            "status": "succeeded",
            "op_id": f"{seq:032x}",
            "app": "shop",
            "environment": "dev",
            "revision": seq,
            "label": f"v{seq}",
            "release_id": RELEASE,
            "started": "2025-01-02T03:04:05.000000Z",
            "finished": "2025-01-02T03:04:06.000000Z",
            "hosts": {},
        }
        made.append(StoredReceipt(digest, seq, "deploy", "shop", "dev", record["finished"], record))
    return made


def test_enqueue_is_idempotent_per_destination_and_format(
    ledger: Ledger, root_key: KeyPair
) -> None:
    outbox = Outbox(ledger)
    made = receipts(root_key, 3)
    assert outbox.enqueue("/x.jsonl", "otlp-json", made[:2]) == 4
    assert outbox.enqueue("/x.jsonl", "otlp-json", made[:2]) == 0
    assert outbox.position("/x.jsonl", "otlp-json") == 2
    assert outbox.enqueue("/x.jsonl", "otlp-json", made) == 2
    assert outbox.position("/x.jsonl", "otlp-json") == 3
    assert outbox.position("/x.jsonl", "dsse") == 0
    assert outbox.enqueue("/x.jsonl", "dsse", made) == 3, "another format is another item"
    assert outbox.enqueue("/y.jsonl", "dsse", made) == 3, "another destination too"
    items = outbox.items("/x.jsonl")
    assert [i.item_id for i in items if i.format == "otlp-json"] == [
        f"{r.digest}.{signal}" for r in made for signal in ("traces", "logs")
    ]
    assert all(i.attempts == 0 and i.delivered is None for i in items)
    assert Outbox(ledger).counts("/x.jsonl").pending == 9


def test_delivers_in_order_once(ledger: Ledger, root_key: KeyPair, tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "store.jsonl").start()
    try:
        destination = parse_destination(receiver.url + "/ingest", tmp_path)
        outbox = Outbox(ledger)
        made = receipts(root_key, 3)
        outbox.enqueue(destination.key, "dsse", made)
        result = deliver(outbox, destination, max_items=None, deadline_s=30)
        assert (result.attempted, result.delivered, result.stopped) == (3, 3, None)
        again = deliver(outbox, destination, max_items=None, deadline_s=30, due_only=False)
        assert again.attempted == 0
    finally:
        receiver.stop()
    stored = receiver.records()
    assert [r["key"] for r in stored] == [r.digest for r in made]
    assert {r["path"] for r in stored} == {"/ingest"}
    for entry, receipt in zip(stored, made, strict=True):
        assert entry["content_type"] == "application/json"
        assert entry["body"].encode() == canonical_json(receipt.envelope)
    counts = outbox.counts(destination.key)
    assert (counts.delivered, counts.pending, counts.failed) == (3, 0, 0)


def test_endpoint_down_backs_off_and_loses_nothing(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    port = free_port()
    destination = parse_destination(f"http://127.0.0.1:{port}", tmp_path)
    outbox = Outbox(ledger)
    outbox.enqueue(destination.key, "otlp-json", receipts(root_key, 2))
    result = deliver(outbox, destination, max_items=None, deadline_s=10, timeout_s=1)
    assert result.attempted == 1 and result.delivered == 0
    assert result.stopped and "cannot reach" in result.stopped
    items = outbox.items(destination.key)
    assert [i.attempts for i in items] == [1, 0, 0, 0], "the rest was not tried"
    assert items[0].last_error and "cannot reach" in items[0].last_error
    assert all(i.next_attempt > stamp(now()) for i in items), "everything waits the backoff"
    assert deliver(outbox, destination, max_items=None, deadline_s=10).attempted == 0

    receiver = Receiver(tmp_path / "store.jsonl", port).start()
    try:
        late = deliver(outbox, destination, max_items=None, deadline_s=30, due_only=False)
    finally:
        receiver.stop()
    assert late.delivered == 4
    assert [r["path"] for r in receiver.records()] == ["/v1/traces", "/v1/logs"] * 2
    assert outbox.counts(destination.key).pending == 0


def test_refused_items_end_as_failed_and_can_be_retried(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    refusing = Receiver(tmp_path / "store.jsonl").start("--status", "400")
    destination = parse_destination(refusing.url, tmp_path)
    outbox = Outbox(ledger)
    outbox.enqueue(destination.key, "cloudevents", receipts(root_key, 2))
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result = deliver(outbox, destination, max_items=None, deadline_s=30, due_only=False)
            assert result.attempted == 2, "a refusal does not stop the round"
            assert result.failed == (2 if attempt == MAX_ATTEMPTS else 0)
        counts = outbox.counts(destination.key)
        assert (counts.pending, counts.failed) == (0, 2)
        assert counts.last_error and counts.last_error.startswith("HTTP 400")
        assert deliver(outbox, destination, max_items=None, deadline_s=30, due_only=False) == (
            type(result)()
        )
    finally:
        refusing.stop()
    receiver = Receiver(tmp_path / "store.jsonl", refusing.port).start()
    try:
        retried = deliver(
            outbox, destination, max_items=None, deadline_s=30, due_only=False, retry_failed=True
        )
    finally:
        receiver.stop()
    assert retried.delivered == 2
    assert outbox.counts(destination.key).failed == 0


def test_a_claimed_destination_is_left_to_its_claimant(ledger: Ledger, root_key: KeyPair) -> None:
    outbox = Outbox(ledger)
    outbox.enqueue("/claimed.jsonl", "dsse", receipts(root_key, 2))
    token, mine = outbox.claim("/claimed.jsonl", lease_s=60, due_only=False)
    assert len(mine) == 2
    assert outbox.claim("/claimed.jsonl", lease_s=60, due_only=False)[1] == []
    outbox.release("/claimed.jsonl", token)
    assert len(outbox.claim("/claimed.jsonl", lease_s=-1, due_only=False)[1]) == 2
    assert len(outbox.claim("/claimed.jsonl", lease_s=60, due_only=False)[1]) == 2, (
        "an expired claim (a crashed exporter) is taken over"
    )


def test_file_destination_appends_each_item_once(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "receipts.jsonl"
    destination = parse_destination(f"file://{target}", tmp_path)
    outbox = Outbox(ledger)
    made = receipts(root_key, 3)
    outbox.enqueue(destination.key, "dsse", made)
    first, second, third = outbox.items(destination.key)
    # A crash after appending the first line, before marking it delivered,
    # and another in the middle of the third line.
    target.parent.mkdir()
    torn = line_of(third)[:25]
    target.write_bytes(line_of(first) + torn)
    result = deliver(outbox, destination, max_items=None, deadline_s=30)
    assert result.delivered == 3
    lines = target.read_bytes().splitlines(keepends=True)
    assert lines[:2] == [line_of(first), torn + b"\n"], "what was there is kept, terminated"
    envelopes = [json.loads(line) for line in lines[2:]]
    assert [envelope_digest(e) for e in envelopes] == [made[1].digest, made[2].digest]
    assert lines[2] == second.body + b"\n", "the bare envelope, byte for byte"
    outbox.enqueue(destination.key, "dsse", made)
    before = target.read_bytes()
    deliver(outbox, destination, max_items=None, deadline_s=30, due_only=False)
    assert target.read_bytes() == before


def test_max_items_and_deadline_bound_a_round(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    destination = parse_destination(str(tmp_path / "bounded.jsonl"), tmp_path)
    outbox = Outbox(ledger)
    outbox.enqueue(destination.key, "cloudevents", receipts(root_key, 5))
    assert deliver(outbox, destination, max_items=2, deadline_s=30).delivered == 2
    assert deliver(outbox, destination, max_items=None, deadline_s=0).attempted == 0
    assert outbox.counts(destination.key).pending == 3, "the rest stays queued, unclaimed"
    assert deliver(outbox, destination, max_items=None, deadline_s=30).delivered == 3


def test_destinations_are_normalised_and_never_show_a_password(tmp_path: Path) -> None:
    plain = parse_destination("HTTP://Collector.EXAMPLE:80/", tmp_path)
    assert (plain.kind, plain.target, plain.key) == (
        "http",
        "http://collector.example/",
        "http://collector.example/",
    )
    secret = parse_destination("https://ops:hunter2@c.example:4318/x?token=abc123", tmp_path)
    assert secret.target == "https://c.example:4318/x?token=abc123"
    assert "hunter2" not in secret.key and "abc123" not in secret.key
    assert secret.key.startswith("https://ops:[redacted]@c.example:4318/x?token=")
    assert secret.authorization == "Basic b3BzOmh1bnRlcjI="
    assert "hunter2" not in repr(secret)
    assert parse_destination("out/r.jsonl", tmp_path).target == str(tmp_path / "out/r.jsonl")
    assert parse_destination("file:///var/x/../r.jsonl", tmp_path).target == "/var/r.jsonl"
    for bad, why in (
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("file://host/x", "names no host"),
        ("http:///x", "no host"),
        ("http://h:99999/", "out of range"),
        ("http://h/#frag", "fragment"),
        ("  ", "empty destination"),
    ):
        with pytest.raises(DestinationError, match=why):
            parse_destination(bad, tmp_path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"format": "zipkin"}, "export.format: expected one of otlp-json, cloudevents, dsse"),
        ({"to": "ftp://x/y"}, "export.to: ftp://x/y: unsupported scheme 'ftp'"),
        ({"auto": True}, "export.to: required when export.auto is true"),
        ({"to": "x.jsonl", "timeout_ms": 0}, "export.timeout_ms: expected 1-60000, found 0"),
        ({"to": "x.jsonl", "retries": 3}, "export.retries: unknown key"),
        ({"auto": "yes", "to": "x"}, "export.auto: expected true or false"),
    ],
)
def test_export_table_errors_name_the_key(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    path = tmp_path / "chassis.toml"
    with pytest.raises(StackError) as caught:
        validate_stack({"app": {"name": "shop"}, "export": table}, path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_export_table_defaults_and_the_guide_example(tmp_path: Path) -> None:
    stack = validate_stack({"app": {"name": "shop"}}, tmp_path / "chassis.toml")
    assert stack.export == ExportSpec(format="otlp-json", to=None, auto=False, timeout_ms=2000)
    guide = (REPO / "guides" / "boundary.md").read_text()
    example = guide.split("```toml\n", 1)[1].split("```", 1)[0]
    raw = {"app": {"name": "shop"}, **tomllib.loads(example)}
    documented = validate_stack(raw, tmp_path / "chassis.toml").export
    assert documented == ExportSpec(to="http://127.0.0.1:4318", auto=True)


def test_export_after_never_fails_the_command(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path)
    notes: list[str] = []
    export_after(ledger, ws, None, notes.append)
    export_after(ledger, ws, ExportSpec(to="x.jsonl"), notes.append)
    assert notes == [] and not (tmp_path / "x.jsonl").exists(), "auto is off by default"

    (tmp_path / "blocker").write_text("a file where a directory should be")
    export_after(ledger, ws, ExportSpec(to="blocker/x.jsonl", auto=True), notes.append)
    assert notes == [], "no receipts yet: nothing to do"

    ReceiptStore(ledger).add(receipts(root_key, 2), position=2)
    export_after(ledger, ws, ExportSpec(to="blocker/x.jsonl", auto=True), notes.append)
    assert len(notes) == 1 and "4 queued" in notes[0] and "File exists" in notes[0], notes

    port = free_port()
    down = ExportSpec(to=f"http://127.0.0.1:{port}", auto=True, timeout_ms=500)
    export_after(ledger, ws, down, notes.append)
    assert len(notes) == 2 and "4 queued" in notes[1] and "cannot reach" in notes[1]
    key = parse_destination(f"http://127.0.0.1:{port}", tmp_path).key
    assert Outbox(ledger).counts(key).pending == 4

    export_after(ledger, ws, ExportSpec(to="ok.jsonl", auto=True), notes.append)
    assert notes[2] == f"export: 4 item(s) delivered to {tmp_path / 'ok.jsonl'}"
    assert len((tmp_path / "ok.jsonl").read_text().splitlines()) == 4
