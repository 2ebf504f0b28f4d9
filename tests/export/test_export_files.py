"""File exports are what the ecosystem reads and never damage what is there;
credentials never go to a plain http:// endpoint unless asked for.

* Each line of an ``otlp-json`` file parses (``google.protobuf.json_format``,
  unknown fields refused) into a bare ``ExportTraceServiceRequest`` or
  ``ExportLogsServiceRequest``, as the OpenTelemetry Collector's file
  exporter writes them and its ``otlpjsonfile`` receiver reads them; each
  ``dsse`` line is a bare envelope that verifies; each ``cloudevents`` line
  is a structured-mode CloudEvent. No wrapper object anywhere.
* A file that does not end with a newline keeps its last line whole.
* Items already in the file (written by another exporter, re-spaced, or
  batched by a Collector) are recognised from the bodies and not appended.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from chassis.export.delivery import DestinationError, deliver, parse_destination
from chassis.export.outbox import Outbox
from chassis.stack.spec import StackError, validate_stack
from ledger.application import Ledger
from ledger.keys import KeyPair
from proofs.dsse import envelope_digest, verify_envelope
from proofs.export import line_keys
from tests.conftest import Runner
from tests.export import free_port
from tests.export.test_outbox import receipts as signed_receipts


def export_to(ledger: Ledger, target: Path, format: str, count: int, key: KeyPair) -> Any:
    destination = parse_destination(str(target), target.parent)
    outbox = Outbox(ledger)
    made = signed_receipts(key, count)
    outbox.enqueue(destination.key, format, made)
    result = deliver(outbox, destination, max_items=None, deadline_s=30, due_only=False)
    assert result.delivered == len(outbox.items(destination.key)), result
    return made


def proto_json(data: Any) -> Any:
    """OTLP/JSON writes ids as hex; the generic protobuf JSON mapping wants base64."""
    if isinstance(data, dict):
        return {
            key: base64.b64encode(bytes.fromhex(value)).decode()
            if key in ("traceId", "spanId", "parentSpanId")
            else proto_json(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [proto_json(item) for item in data]
    return data


def test_otlp_file_lines_are_bare_otlp_requests(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    target = tmp_path / "otlp.jsonl"
    made = export_to(ledger, target, "otlp-json", 2, root_key)
    lines = target.read_text().splitlines()
    assert len(lines) == 4
    for n, line in enumerate(lines):
        document = json.loads(line)
        traces = n % 2 == 0
        assert set(document) == {"resourceSpans" if traces else "resourceLogs"}, "no wrapper"
        message = ExportTraceServiceRequest() if traces else ExportLogsServiceRequest()
        Parse(json.dumps(proto_json(document)), message, ignore_unknown_fields=False)
        if traces:
            spans = message.resource_spans[0].scope_spans[0].spans
            assert spans[0].trace_id.hex() == made[n // 2].record["op_id"]
        else:
            records = message.resource_logs[0].scope_logs[0].log_records
            assert json.loads(records[0].body.string_value) == made[n // 2].envelope
        signal = "traces" if traces else "logs"
        assert line_keys(document) == {("otlp-json", f"{made[n // 2].digest}.{signal}")}


def test_dsse_file_lines_are_bare_envelopes_that_verify(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    target = tmp_path / "receipts.dsse.jsonl"
    made = export_to(ledger, target, "dsse", 3, root_key)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [set(line) for line in lines] == [{"payloadType", "payload", "signatures"}] * 3
    assert [envelope_digest(line) for line in lines] == [r.digest for r in made]
    for line in lines:
        verify_envelope(line, {root_key.keyid: root_key.public_key})


def test_cloudevents_file_lines_are_structured_events(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    target = tmp_path / "events.jsonl"
    made = export_to(ledger, target, "cloudevents", 2, root_key)
    events = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["id"] for e in events] == [r.digest for r in made], "the outbox id is the event id"
    for event in events:
        assert event["specversion"] == "1.0" and event["datacontenttype"] == "application/json"
        assert {"id", "source", "type", "specversion", "data"} <= set(event)


@pytest.mark.parametrize("format", ["otlp-json", "dsse", "cloudevents"])
def test_a_file_without_a_final_newline_keeps_its_last_line(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path, format: str
) -> None:
    target = tmp_path / "shared.jsonl"
    before = b'{"resourceSpans":[]}\n{"written":"by someone else","no":"newline"}'
    target.write_bytes(before)
    made = export_to(ledger, target, format, 2, root_key)
    content = target.read_bytes()
    assert content.startswith(before + b"\n"), "nothing cut, nothing glued on"
    assert content.endswith(b"\n")
    lines = content.splitlines()
    assert json.loads(lines[1]) == {"written": "by someone else", "no": "newline"}
    assert len(lines) == 2 + len(made) * (2 if format == "otlp-json" else 1)
    for line in lines[2:]:
        json.loads(line)


def test_lines_already_there_are_recognised_from_their_bodies(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path
) -> None:
    """Another exporter wrote the first receipt (re-spaced, keys reordered);
    a Collector batched the spans of the first two into one request."""
    made = signed_receipts(root_key, 3)
    target = tmp_path / "receipts.jsonl"
    respaced = json.dumps(dict(reversed(list(made[0].envelope.items()))), indent=1)
    target.write_text(" ".join(respaced.split()) + "\n")
    destination = parse_destination(str(target), tmp_path)
    outbox = Outbox(ledger)
    outbox.enqueue(destination.key, "dsse", made)
    assert deliver(outbox, destination, max_items=None, deadline_s=30).delivered == 3
    lines = target.read_text().splitlines()
    assert [envelope_digest(json.loads(line)) for line in lines] == [r.digest for r in made]

    otlp = tmp_path / "otlp.jsonl"
    otlp_destination = parse_destination(str(otlp), tmp_path)
    outbox.enqueue(otlp_destination.key, "otlp-json", made)
    traces = [json.loads(i.body) for i in outbox.items(otlp_destination.key)][0:4:2]
    batched = traces[0]
    batched["resourceSpans"] += traces[1]["resourceSpans"]
    otlp.write_text(json.dumps(batched) + "\n")
    deliver(outbox, otlp_destination, max_items=None, deadline_s=30)
    written = [line_keys(json.loads(line)) for line in otlp.read_text().splitlines()]
    assert written[1:] == [
        {("otlp-json", f"{made[0].digest}.logs")},
        {("otlp-json", f"{made[1].digest}.logs")},
        {("otlp-json", f"{made[2].digest}.traces")},
        {("otlp-json", f"{made[2].digest}.logs")},
    ]


def test_every_line_is_flushed_and_fsynced_whole(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "synced.jsonl"
    sizes: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        sizes.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    export_to(ledger, target, "cloudevents", 3, root_key)
    content = target.read_bytes()
    ends = [n + 1 for n, byte in enumerate(content) if byte == ord("\n")]
    assert sizes[-3:] == ends, "synced after each whole line, never in the middle of one"


@pytest.mark.parametrize(
    ("url", "carried"),
    [
        ("http://ops:hunter2@collector.example:4318", "user info"),
        ("http://tok3nvalue0123456@collector.example/", "user info"),
        ("http://collector.example/ingest?token=tok3nvalue", "query parameter 'token'"),
        ("HTTP://collector.example/?x=1&api_key=abc123", "query parameter 'api_key'"),
    ],
)
def test_credentials_over_plain_http_are_refused(tmp_path: Path, url: str, carried: str) -> None:
    with pytest.raises(DestinationError) as caught:
        parse_destination(url, tmp_path)
    message = str(caught.value)
    assert f"refusing to send credentials ({carried}) over plain http://" in message
    assert "--insecure" in message and "\n" not in message
    for secret in ("hunter2", "tok3nvalue", "abc123"):
        assert secret not in message
    allowed = parse_destination(url, tmp_path, insecure=True)
    assert allowed.kind == "http"
    secure = parse_destination("https" + url[4:], tmp_path)
    assert secure.kind == "http"


def test_plain_http_without_credentials_is_fine(tmp_path: Path) -> None:
    assert parse_destination("http://127.0.0.1:4318", tmp_path).authorization is None
    assert parse_destination("http://c.example/?tenant=shop", tmp_path).kind == "http"


def test_the_cli_refuses_with_one_line_unless_insecure(
    run: Runner, workspace: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://ops:hunter2@127.0.0.1:{port}/"
    refused = run("receipts", "export", "--to", url)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.count("\n") == 1 and refused.stdout == ""
    assert refused.stderr.startswith("chassis: error: --to: http://ops:[redacted]@127.0.0.1:")
    assert "use https:// or pass --insecure" in refused.stderr and "hunter2" not in refused.stderr
    allowed = run("receipts", "export", "--to", url, "--insecure", "--json")
    assert allowed.exit_code == 0, allowed.output  # nothing to send yet
    assert "hunter2" not in allowed.output


def test_the_export_table_refuses_http_credentials(tmp_path: Path) -> None:
    path = tmp_path / "chassis.toml"
    with pytest.raises(StackError, match=r"export\.to: .*refusing to send credentials"):
        validate_stack(
            {"app": {"name": "shop"}, "export": {"to": "http://collector.example/?token=t0k3n"}},
            path,
        )
