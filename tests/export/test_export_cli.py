"""``chassis receipts export`` end to end: the sample app deployed on local
hosts, its receipts exported to a real receiver process (killed and restarted
mid-stream), to files, and to stdout; secrets planted in the stack never leave."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.cli.app import App
from chassis.export import export_after
from chassis.export.outbox import Outbox
from chassis.receipts import ReceiptStore, StoredReceipt, issue_pending
from chassis.sample_app import build_sample_release
from ledger.canonical import canonical_json
from proofs.dsse import envelope_digest
from tests.conftest import Runner
from tests.engine.conftest import distinct_free_ports
from tests.export import Receiver

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
DB_PASSWORD = "hunter2"
BEARER = "abcdefghij0123456789KLMN"
SECRETS = (DB_PASSWORD.encode(), BEARER.encode())


def issue(root: Path) -> list[StoredReceipt]:
    """Issue the receipts of what the CLI did (a no-op once the CLI does it itself)."""
    app = App(workspace_path=root)
    try:
        ledger = app.ledger(signing=True)
        issue_pending(ledger, app.workspace, app.signer(), lambda _: None)
        return ReceiptStore(ledger).all()
    finally:
        app.close()


@pytest.fixture
def shop(run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The sample app deployed twice (v1, v2) on three local hosts, with secrets
    planted in a health check's URL (which reaches the receipts through the
    health evidence) and, where Chassis accepts them there at all, in a
    component's env and a release's config."""
    root = tmp_path / "shop"
    run.ok("init", str(root), "--name", "shop", "--example")
    stack = root / "chassis.toml"
    gateway, api = distinct_free_ports()
    text = re.sub(r"\b8081\b", str(api), re.sub(r"\b8080\b", str(gateway), stack.read_text()))
    db_url = f"postgres://u:{DB_PASSWORD}@db/x"
    text = text.replace('path = "/healthz"', f'path = "/healthz?token={BEARER}&db={db_url}"', 1)
    assert BEARER in text
    monkeypatch.chdir(root)
    planted = text.replace(
        'env = { LOG_LEVEL = "info" }', f'env = {{ LOG_LEVEL = "info", DATABASE_URL = "{db_url}" }}'
    )
    stack.write_text(planted)
    if run("stack", "validate").exit_code != 0:  # refused as a secret: it cannot leave either
        stack.write_text(text)
    dist = tmp_path / "dist"
    for version in ("v1", "v2"):
        bundle, _ = build_sample_release(dist, version)
        add = ("release", "add", version, "--artifact", str(bundle))
        if run(*add, "--config", f"UPSTREAM=Bearer {BEARER}").exit_code != 0:
            run.ok(*add)
    try:
        run.ok(*DEPLOY, "--release", "v1")
        run.ok(*DEPLOY, "--release", "v2")
        yield root
    finally:
        for host in ("dev-1", "dev-2", "dev-3"):
            supervisor = DirectSupervisor(
                LocalConnector(host), str(root / ".chassis" / "hosts" / host)
            )
            for component in ("gateway", "api", "worker"):
                supervisor.stop(component)


@pytest.fixture
def receipts(shop: Path) -> list[StoredReceipt]:
    issued = issue(shop)
    assert {r.operation for r in issued} >= {"deploy"} and len(issued) >= 3
    return issued


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    started = Receiver(tmp_path / "received.jsonl")
    yield started
    started.stop()


def otlp_ids(receipts: list[StoredReceipt]) -> list[str]:
    return [f"{r.digest}.{signal}" for r in receipts for signal in ("traces", "logs")]


def outbox_rows(root: Path) -> list[Any]:
    app = App(workspace_path=root)
    try:
        return Outbox(app.ledger()).items()
    finally:
        app.close()


def otlp_to_proto_json(data: Any) -> Any:
    """OTLP/JSON writes ids as hex; the generic protobuf JSON mapping wants base64."""
    if isinstance(data, dict):
        return {
            key: base64.b64encode(bytes.fromhex(value)).decode()
            if key in ("traceId", "spanId", "parentSpanId")
            else otlp_to_proto_json(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [otlp_to_proto_json(item) for item in data]
    return data


def test_otlp_to_a_collector_delivers_every_item_once(
    run: Runner, receipts: list[StoredReceipt], receiver: Receiver
) -> None:
    receiver.start()
    result = run("receipts", "export", "--format", "otlp-json", "--to", receiver.url, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    total = 2 * len(receipts)
    assert summary["enqueued"] == summary["delivered"] == total
    assert (summary["pending"], summary["failed"]) == (0, 0)
    assert f"export: {total} of {total}" in result.stderr
    stored = receiver.records()
    assert [r["key"] for r in stored] == otlp_ids(receipts)
    assert receiver.duplicates() == []
    for entry in stored:
        assert entry["content_type"] == "application/json"
        body = otlp_to_proto_json(json.loads(entry["body"]))
        if entry["key"].endswith(".traces"):
            assert entry["path"] == "/v1/traces"
            spans = Parse(json.dumps(body), ExportTraceServiceRequest())
            assert spans.resource_spans[0].scope_spans[0].spans
        else:
            assert entry["path"] == "/v1/logs"
            logs = Parse(json.dumps(body), ExportLogsServiceRequest())
            assert logs.resource_logs[0].scope_logs[0].log_records

    again = run("receipts", "export", "--format", "otlp-json", "--to", receiver.url, "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["enqueued"] == 0
    assert len(receiver.records()) == total and receiver.duplicates() == []


def test_collector_down_keeps_everything_queued_until_it_is_back(
    run: Runner, receipts: list[StoredReceipt], receiver: Receiver
) -> None:
    down = run("receipts", "export", "--format", "otlp-json", "--to", receiver.url)
    total = 2 * len(receipts)
    assert down.exit_code == 19, down.stderr
    assert f"{total} pending, 0 failed" in down.stdout
    assert "next attempt:" in down.stdout and "cannot reach" in down.stdout
    assert f"export: 1 of {total} " in down.stderr and " not delivered\n" in down.stderr
    assert down.stderr.splitlines()[-1].startswith("chassis: error: http://127.0.0.1:")
    assert f"{total} item(s) still queued" in down.stderr
    rows = outbox_rows(Path.cwd())
    assert len(rows) == total and all(row.delivered is None for row in rows)

    receiver.start()
    back = run("receipts", "export", "--format", "otlp-json", "--to", receiver.url, "--json")
    assert back.exit_code == 0, back.stderr
    summary = json.loads(back.stdout)
    assert (summary["enqueued"], summary["delivered"], summary["pending"]) == (0, total, 0)
    assert [r["key"] for r in receiver.records()] == otlp_ids(receipts)


def test_collector_crash_mid_stream_loses_and_duplicates_nothing(
    run: Runner, receipts: list[StoredReceipt], receiver: Receiver
) -> None:
    receiver.start("--exit-after", "3")
    crashed = run("receipts", "export", "--to", receiver.url, "--json")
    assert crashed.exit_code == 19
    assert receiver.wait() == 3, "the receiver died after storing its third item, unanswered"
    summary = json.loads(crashed.stdout)
    total = 2 * len(receipts)
    assert (summary["delivered"], summary["pending"]) == (2, total - 2)

    receiver.start()  # same port, same store
    resumed = run("receipts", "export", "--retry-only", "--to", receiver.url, "--json")
    assert resumed.exit_code == 0, resumed.stderr
    ids = [r["key"] for r in receiver.records()]
    assert ids == otlp_ids(receipts), "every item arrived, in order, each stored once"
    assert receiver.duplicates() == [ids[2]], "only the unanswered item was sent again"


def test_file_destination_gets_every_item_once(
    run: Runner, receipts: list[StoredReceipt], tmp_path: Path
) -> None:
    target = tmp_path / "exports" / "receipts.dsse.jsonl"
    run.ok("receipts", "export", "--format", "dsse", "--to", str(target))
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines == [r.envelope for r in receipts], "bare envelopes, one per line"
    for line, receipt in zip(lines, receipts, strict=True):
        assert hashlib.sha256(canonical_json(line)).hexdigest() == receipt.digest
    before = target.read_bytes()
    run.ok("receipts", "export", "--format", "dsse", "--to", f"file://{target}")
    run.ok("receipts", "export", "--format", "dsse", "--to", str(target), "--since", "0")
    assert target.read_bytes() == before, "re-running appends nothing"

    since = receipts[-2].seq
    partial = tmp_path / "partial.jsonl"
    run.ok(
        "receipts", "export", "--format", "cloudevents", "--to", str(partial), "--since", str(since)
    )
    assert [json.loads(x)["id"] for x in partial.read_text().splitlines()] == [receipts[-1].digest]


def test_cloudevents_to_http_carry_ce_id(
    run: Runner, receipts: list[StoredReceipt], receiver: Receiver
) -> None:
    receiver.start()
    run.ok("receipts", "export", "--format", "cloudevents", "--to", receiver.url + "/events")
    stored = receiver.records()
    assert [r["key"] for r in stored] == [r.digest for r in receipts]
    for entry in stored:
        event = json.loads(entry["body"])
        assert entry["path"] == "/events"
        assert entry["content_type"] == "application/cloudevents+json"
        assert entry["ce_id"] == entry["key"] == event["id"]
        assert event["specversion"] == "1.0" and event["chassisreceiptdigest"] == event["id"]
    types = [json.loads(e["body"])["type"] for e in stored]
    assert "dev.cdevents.service.deployed.0.2.0" in types
    assert "dev.cdevents.service.upgraded.0.2.0" in types


def test_without_a_destination_items_are_printed_and_nothing_is_queued(
    run: Runner, receipts: list[StoredReceipt]
) -> None:
    dsse = run.ok("receipts", "export", "--format", "dsse").stdout.splitlines()
    assert [json.loads(line) for line in dsse] == [r.envelope for r in receipts]
    otlp = run.ok("receipts", "export").stdout.splitlines()
    assert len(otlp) == 2 * len(receipts)
    assert all(
        "resourceSpans" in json.loads(line) or "resourceLogs" in json.loads(line) for line in otlp
    )
    assert outbox_rows(Path.cwd()) == []
    retry = run("receipts", "export", "--retry-only")
    assert retry.exit_code == 2 and "--retry-only needs a destination" in retry.stderr


def test_export_table_sets_the_default_and_auto_export_queues_when_down(
    run: Runner, shop: Path, receiver: Receiver
) -> None:
    stack = shop / "chassis.toml"
    stack.write_text(
        stack.read_text()
        + f'\n[export]\nformat = "cloudevents"\nto = "{receiver.url}"\n'
        + "auto = true\ntimeout_ms = 300\n"
    )
    app = App(workspace_path=shop)
    notes: list[str] = []
    try:
        ledger = app.ledger(signing=True)
        issue_pending(ledger, app.workspace, app.signer(), lambda _: None)
        export_after(ledger, app.workspace, app.stack().export, notes.append)
        queued = Outbox(ledger).counts(receiver.url).pending
    finally:
        app.close()
    assert len(notes) == 1 and "queued" in notes[0] and "cannot reach" in notes[0], notes
    assert queued >= 3

    receiver.start()
    result = run("receipts", "export", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "cloudevents" and summary["destination"] == receiver.url
    assert summary["delivered"] == queued == len(receiver.records())


def test_bad_export_table_is_one_line(run: Runner, shop: Path) -> None:
    stack = shop / "chassis.toml"
    stack.write_text(stack.read_text() + '\n[export]\nformat = "zipkin"\n')
    result = run("receipts", "export")
    assert result.exit_code == 3
    assert result.stderr == (
        f"chassis: error: {stack}: export.format: expected one of otlp-json, cloudevents, dsse, "
        "found 'zipkin'\n"
    )


def expand(data: bytes) -> bytes:
    """``data`` plus every JSON string inside it, decoded again where it is itself
    JSON or base64 (DSSE payloads), so a secret cannot hide in an encoding."""
    found = [data]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                found.append(str(key).encode())
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.append(value.encode())
            with contextlib.suppress(ValueError):
                walk(json.loads(value))
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return
            found.append(decoded)
            with contextlib.suppress(ValueError):
                walk(json.loads(decoded))

    with contextlib.suppress(ValueError):
        walk(json.loads(data))
    return b"\n".join(found)


def test_planted_secrets_never_leave(
    run: Runner, receipts: list[StoredReceipt], tmp_path: Path
) -> None:
    sent: list[bytes] = []
    for format in ("otlp-json", "cloudevents", "dsse"):
        # One receiver each: cloudevents and dsse items share ids (the receipt digest).
        receiver = Receiver(tmp_path / f"received-{format}.jsonl").start()
        try:
            run.ok("receipts", "export", "--format", format, "--to", receiver.url)
        finally:
            receiver.stop()
        assert len(receiver.records()) == len(receipts) * (2 if format == "otlp-json" else 1)
        sent.append(receiver.store.read_bytes())
        run.ok("receipts", "export", "--format", format, "--to", str(tmp_path / f"{format}.jsonl"))
    everything = [
        expand(json.loads(line)["body"].encode()) for store in sent for line in store.splitlines()
    ]
    everything += [expand(row.body) for row in outbox_rows(Path.cwd())]
    everything += [
        expand(line) for f in tmp_path.glob("*.jsonl") for line in f.read_bytes().splitlines()
    ]
    everything.append(run.ok("receipts", "export", "--format", "dsse").stdout.encode())
    haystack = b"\n".join(everything)
    assert b"/healthz?token=" in haystack, "the health URL reached the receipts"
    assert re.search(rb"/healthz\?token=\[redacted[^&]*&db=postgres://u:\[redacted", haystack), (
        "and its secrets were replaced by markers"
    )
    for secret in SECRETS:
        assert secret not in haystack
        assert not any(secret in store for store in sent)


def test_auto_export_runs_after_every_writing_command(
    run: Runner, shop: Path, tmp_path: Path
) -> None:
    """With ``[export] auto = true`` a deploy's receipts reach the destination
    without any export command: checkpoint, receipts, export, in that order."""
    sink = tmp_path / "exported.jsonl"
    stack = shop / "chassis.toml"
    stack.write_text(
        stack.read_text() + f'\n[export]\nformat = "dsse"\nto = "{sink}"\nauto = true\n'
    )
    deploy = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
    run.ok(*deploy, "--release", "v1")
    listed = json.loads(run.ok("receipts", "list", "--json").stdout)
    exported = [envelope_digest(json.loads(line)) for line in sink.read_text().splitlines()]
    assert exported == [r["digest"] for r in listed], "every receipt so far, in ledger order"
    assert listed[-1]["operation"] == "deploy" and listed[-1]["label"] == "v1"
    run.ok(*deploy, "--release", "v2")
    again = [envelope_digest(json.loads(line)) for line in sink.read_text().splitlines()]
    assert len(again) == len(exported) + 1 and len(set(again)) == len(again)
