"""OTLP/JSON parses into the real OTLP protobuf messages; CloudEvents carry the
required attributes and CDEvents types; rendering is stable."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ledger.canonical import canonical_json
from ledger.keys import KeyPair, generate_keypair
from proofs.dsse import PAYLOAD_TYPE_INTOTO, envelope_digest, sign_envelope, verify_envelope
from proofs.export import FORMATS, check_record, otlp_path, render
from proofs.export.cloudevents import (
    CONTEXT_ATTRIBUTES,
    EXTENSION_NAME,
    SERVICE_DEPLOYED,
    SERVICE_ROLLEDBACK,
    SERVICE_UPGRADED,
    cloudevent,
)
from proofs.export.otlp import logs_request, span_id, trace_request, unix_nanos
from proofs.intoto import RECEIPT_PREDICATE, statement, statement_bytes, subject

RELEASE = "ab" * 32
OLD_RELEASE = "cd" * 32
OP_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def signer(tmp_path: Path) -> KeyPair:
    return generate_keypair(tmp_path / "export-keys", "signer")


def make_record(signer: KeyPair, **changes: Any) -> dict[str, Any]:
    st = statement([subject("shop", RELEASE)], RECEIPT_PREDICATE, {"operation": "deploy"})
    envelope = sign_envelope(statement_bytes(st), PAYLOAD_TYPE_INTOTO, signer)
    record: dict[str, Any] = {
        "receipt_digest": envelope_digest(envelope),
        "envelope": envelope,
        "statement": st,
        "operation": "deploy",
        "status": "succeeded",
        "op_id": OP_ID,
        "app": "shop",
        "environment": "prod",
        "revision": 3,
        "label": "v1.2.3",
        "release_id": RELEASE,
        "started": "2025-01-02T03:04:05.123456Z",
        "finished": "2025-01-02T03:04:09.000001Z",
        "hosts": {
            "web-2": {
                "status": "failed",
                "release_id": OLD_RELEASE,
                "started": "2025-01-02T03:04:05.200000Z",
                "finished": "2025-01-02T03:04:08.000000Z",
            },
            "web-1": {
                "status": "succeeded",
                "release_id": RELEASE,
                "started": "2025-01-02T03:04:05.200000Z",
                "finished": "2025-01-02T03:04:07.500000Z",
            },
        },
        "first": False,
    }
    record.update(changes)
    return record


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


def attributes(proto_attributes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for kv in proto_attributes:
        kind = kv.value.WhichOneof("value")
        result[kv.key] = getattr(kv.value, kind)
    return result


def test_unix_nanos() -> None:
    assert unix_nanos("1970-01-01T00:00:00Z") == "0"
    assert unix_nanos("1970-01-01T00:00:01.5Z") == "1500000000"
    assert unix_nanos("2025-01-02T03:04:05.123456789Z") == "1735787045123456789"
    assert unix_nanos("2025-01-02T04:04:05.123456789+01:00") == "1735787045123456789"


def test_trace_request_parses_as_otlp(signer: KeyPair) -> None:
    record = make_record(signer)
    request = trace_request([record])
    text = json.dumps(request)
    # The wire form itself: hex ids, int64 as strings, enum as integer.
    raw_span = request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert raw_span["traceId"] == OP_ID
    assert re.fullmatch(r"[0-9a-f]{16}", raw_span["spanId"])
    assert isinstance(raw_span["startTimeUnixNano"], str)
    assert raw_span["kind"] == 1

    parsed = Parse(json.dumps(otlp_to_proto_json(json.loads(text))), ExportTraceServiceRequest())
    [resource_spans] = parsed.resource_spans
    assert attributes(resource_spans.resource.attributes) == {"service.name": "chassis"}
    spans = resource_spans.scope_spans[0].spans
    assert len(spans) == 3
    parent, *children = spans
    assert parent.trace_id == bytes.fromhex(OP_ID)
    assert parent.span_id == bytes.fromhex(span_id(OP_ID))
    assert parent.parent_span_id == b""
    assert parent.start_time_unix_nano == int(unix_nanos(record["started"]))
    assert parent.status.code == 1
    assert attributes(parent.attributes) == {
        "deployment.id": OP_ID,
        "deployment.name": "shop/prod",
        "deployment.status": "succeeded",
        "deployment.environment.name": "prod",
        "deployment.target.name": "shop",
        "service.version": "v1.2.3",
        "artifact.hash": RELEASE,
        "artifact.attestation.hash": record["receipt_digest"],
        "chassis.operation": "deploy",
        "chassis.revision": 3,
    }
    by_host = {attributes(c.attributes)["deployment.target.name"]: c for c in children}
    assert set(by_host) == {"web-1", "web-2"}
    for host, child in by_host.items():
        assert child.trace_id == parent.trace_id
        assert child.parent_span_id == parent.span_id
        assert child.span_id == bytes.fromhex(span_id(OP_ID, host))
        assert child.span_id != parent.span_id
    assert by_host["web-2"].status.code == 2
    assert attributes(by_host["web-2"].attributes)["deployment.status"] == "failed"
    assert attributes(by_host["web-2"].attributes)["artifact.hash"] == OLD_RELEASE
    assert by_host["web-1"].status.code == 1
    assert by_host["web-1"].end_time_unix_nano == int(unix_nanos("2025-01-02T03:04:07.5Z"))


def test_failed_operation_span_is_error_and_nulls_are_left_out(signer: KeyPair) -> None:
    record = make_record(
        signer, status="failed", label=None, revision=None, release_id=None, hosts={}
    )
    request = trace_request([record])
    parsed = Parse(json.dumps(otlp_to_proto_json(request)), ExportTraceServiceRequest())
    [span] = parsed.resource_spans[0].scope_spans[0].spans
    assert span.status.code == 2
    found = attributes(span.attributes)
    assert found["deployment.status"] == "failed"
    assert "service.version" not in found and "artifact.hash" not in found


def test_logs_request_parses_as_otlp(signer: KeyPair) -> None:
    record = make_record(signer)
    request = logs_request([record])
    parsed = Parse(json.dumps(otlp_to_proto_json(request)), ExportLogsServiceRequest())
    [log] = parsed.resource_logs[0].scope_logs[0].log_records
    assert log.trace_id == bytes.fromhex(OP_ID)
    assert log.span_id == bytes.fromhex(span_id(OP_ID))
    assert log.severity_number == 9
    assert log.time_unix_nano == int(unix_nanos(record["finished"]))
    envelope = json.loads(log.body.string_value)
    assert envelope == record["envelope"]
    assert verify_envelope(envelope, {signer.keyid: signer.public_key}).keyid == signer.keyid
    found = attributes(log.attributes)
    assert found["artifact.attestation.hash"] == record["receipt_digest"]
    assert found["deployment.id"] == OP_ID
    failed = logs_request([make_record(signer, status="failed")])
    assert failed["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["severityNumber"] == 17


@pytest.mark.parametrize(
    ("operation", "status", "first", "expected"),
    [
        ("deploy", "succeeded", True, SERVICE_DEPLOYED),
        ("deploy", "succeeded", False, SERVICE_UPGRADED),
        ("rollback", "succeeded", False, SERVICE_ROLLEDBACK),
        ("deploy", "failed", True, "dev.chassis.deploy.failed.0.1.0"),
        ("rollback", "failed", False, "dev.chassis.rollback.failed.0.1.0"),
        ("lease-break", "succeeded", False, "dev.chassis.lease-break.succeeded.0.1.0"),
        ("recover", "succeeded", False, "dev.chassis.recover.succeeded.0.1.0"),
    ],
)
def test_cloudevent_type_per_operation(
    signer: KeyPair, operation: str, status: str, first: bool, expected: str
) -> None:
    event = cloudevent(make_record(signer, operation=operation, status=status, first=first))
    assert event["type"] == expected
    if expected.startswith("dev.cdevents."):
        assert event["data"]["context"]["type"] == expected
        assert event["data"]["subject"]["type"] == "service"
    else:
        assert event["data"]["operation"] == operation


def test_cloudevent_attributes(signer: KeyPair) -> None:
    record = make_record(signer, first=True, app="my shop")
    event = cloudevent(record)
    for required in ("specversion", "id", "source", "type"):
        assert isinstance(event[required], str) and event[required]
    assert event["specversion"] == "1.0"
    assert event["id"] == record["receipt_digest"]
    assert event["source"] == "/chassis/my%20shop/prod"
    assert event["time"] == record["finished"]
    assert event["datacontenttype"] == "application/json"
    assert event["chassisreceiptdigest"] == record["receipt_digest"]
    assert event["traceparent"] == f"00-{OP_ID}-{span_id(OP_ID)}-01"
    for name in set(event) - CONTEXT_ATTRIBUTES - {"data"}:
        assert EXTENSION_NAME.fullmatch(name), name
    context = event["data"]["context"]
    assert context["id"] == event["id"] and context["source"] == event["source"]
    assert context["version"] == "0.4.1"
    content = event["data"]["subject"]["content"]
    assert content["environment"] == {"id": "prod"}
    assert content["artifactId"] == f"pkg:generic/my%20shop@v1.2.3?checksum=sha256:{RELEASE}"
    json.dumps(event)


def test_cloudevent_id_is_stable(signer: KeyPair) -> None:
    record = make_record(signer)
    assert cloudevent(record) == cloudevent(copy.deepcopy(record))
    other = make_record(signer, op_id="f" * 32)
    other["envelope"] = sign_envelope(b"{}", "application/x", signer)
    other["receipt_digest"] = envelope_digest(other["envelope"])
    assert cloudevent(other)["id"] != cloudevent(record)["id"]


def test_render_each_format(signer: KeyPair) -> None:
    records = [make_record(signer), make_record(signer, op_id="e" * 32, operation="rollback")]
    digest = records[0]["receipt_digest"]
    assert FORMATS == ("otlp-json", "cloudevents", "dsse")

    dsse_items = render("dsse", records)
    assert [item_id for item_id, _ in dsse_items] == [r["receipt_digest"] for r in records]
    assert hashlib.sha256(dsse_items[0][1]).hexdigest() == digest
    assert json.loads(dsse_items[0][1]) == records[0]["envelope"]

    events = render("cloudevents", records)
    assert [json.loads(body)["id"] for _, body in events] == [i for i, _ in events]

    otlp = render("otlp-json", records)
    assert [item_id for item_id, _ in otlp[:2]] == [f"{digest}.traces", f"{digest}.logs"]
    assert [otlp_path(item_id) for item_id, _ in otlp[:2]] == ["/v1/traces", "/v1/logs"]
    Parse(json.dumps(otlp_to_proto_json(json.loads(otlp[0][1]))), ExportTraceServiceRequest())
    Parse(json.dumps(otlp_to_proto_json(json.loads(otlp[1][1]))), ExportLogsServiceRequest())
    assert render("otlp-json", records) == otlp, "same records, same bytes"
    assert canonical_json(json.loads(otlp[0][1])) == otlp[0][1]


def test_render_refuses_unknown_format_and_bad_records(signer: KeyPair) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        render("zipkin", [])
    with pytest.raises(ValueError, match="not an otlp-json item id"):
        otlp_path("abc")
    bad_changes: list[dict[str, Any]] = [
        {"op_id": "0" * 32},
        {"op_id": "XYZ"},
        {"receipt_digest": "ab"},
        {"operation": "delete"},
        {"status": "ok"},
        {"revision": "3"},
        {"release_id": "v1"},
        {"started": "yesterday"},
        {"first": "yes"},
        {"hosts": {"web-1": {"status": 1}}},
    ]
    for changes in bad_changes:
        with pytest.raises(ValueError, match="receipt record"):
            check_record(make_record(signer, **changes))
        with pytest.raises(ValueError):
            render("cloudevents", [make_record(signer, **changes)])
