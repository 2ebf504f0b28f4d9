"""OTLP/JSON (traces and logs) from receipt records.

The JSON follows the OTLP "JSON Protobuf Encoding": lowerCamelCase field
names, trace and span ids as lowercase hex (not base64), 64-bit integers as
decimal strings, enums as integers. Ids are derived, never random, so
re-exporting a receipt yields the same spans:

* ``traceId`` = the record's ``op_id`` (32 hex), so a trace can be found by
  the operation id ``chassis`` prints;
* ``spanId`` of the operation span = first 8 bytes of
  ``sha256("chassis.otlp.span\\0" || op_id)``; of the child span for host
  ``h``: of ``sha256("chassis.otlp.span\\0" || op_id || "\\0" || h)``.

Span attributes (OpenTelemetry semantic conventions where they exist):
``deployment.id`` (op_id), ``deployment.name`` (``app/environment``),
``deployment.status`` (``succeeded``/``failed``),
``deployment.environment.name``, ``deployment.target.name`` (the app on the
operation span, the host on a host span), ``service.version`` (label),
``artifact.hash`` (release id), ``artifact.attestation.hash`` (receipt
digest), and ``chassis.operation``, ``chassis.revision``,
``chassis.host.status``. Attributes with no value are left out. A failed
operation (or host) gets status code ERROR (2), a succeeded one OK (1).
The log record of a receipt carries the DSSE envelope as canonical JSON in a
string body, the operation span's ids and the same attributes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.canonical import canonical_json
from proofs.export import ATTESTATION_ATTRIBUTE, RFC3339, check_record

SERVICE_NAME = "chassis"
SCOPE_NAME = "chassis.proofs.export"
SPAN_KIND_INTERNAL = 1
STATUS_OK = 1
STATUS_ERROR = 2
SEVERITY_INFO = 9
SEVERITY_ERROR = 17

_FAILED_HOST = frozenset({"failed", "error", "unhealthy"})
_GOOD_HOST = frozenset({"succeeded", "ok", "healthy"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def trace_id(op_id: str) -> str:
    """The OTLP trace id of an operation: its op_id."""
    return op_id


def span_id(op_id: str, host: str | None = None) -> str:
    """The span id of the operation span, or of its child span for ``host``."""
    data = b"chassis.otlp.span\x00" + op_id.encode()
    if host is not None:
        data += b"\x00" + host.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def unix_nanos(timestamp: str) -> str:
    """RFC 3339 to Unix nanoseconds as a decimal string (nanosecond digits kept)."""
    match = RFC3339.fullmatch(timestamp)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {timestamp!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    if offset in ("Z", "z"):
        delta = timedelta(0)
    else:
        sign = -1 if offset[0] == "-" else 1
        delta = sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    whole = moment.replace(tzinfo=UTC) - delta - _EPOCH
    seconds = whole.days * 86_400 + whole.seconds
    nanos = int((fraction or "").ljust(9, "0"))
    return str(seconds * 1_000_000_000 + nanos)


def _value(value: str | int | bool) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": value}


def _attributes(pairs: Iterable[tuple[str, str | int | bool | None]]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in pairs if value is not None]


def _operation_attributes(record: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("deployment.id", record["op_id"]),
        ("deployment.name", f"{record['app']}/{record['environment']}"),
        ("deployment.status", record["status"]),
        ("deployment.environment.name", record["environment"]),
        ("service.version", record.get("label")),
        (ATTESTATION_ATTRIBUTE, record["receipt_digest"]),
        ("chassis.operation", record["operation"]),
        ("chassis.revision", record.get("revision")),
    ]


def _status(failed: bool, good: bool, message: str) -> dict[str, Any]:
    if failed:
        return {"code": STATUS_ERROR, "message": message}
    return {"code": STATUS_OK} if good else {}


def _spans(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    op_id = record["op_id"]
    parent = span_id(op_id)
    failed = record["status"] == "failed"
    spans = [
        {
            "traceId": trace_id(op_id),
            "spanId": parent,
            "name": f"{record['operation']} {record['app']}/{record['environment']}",
            "kind": SPAN_KIND_INTERNAL,
            "startTimeUnixNano": unix_nanos(record["started"]),
            "endTimeUnixNano": unix_nanos(record["finished"]),
            "attributes": _attributes(
                [
                    *_operation_attributes(record),
                    ("deployment.target.name", record["app"]),
                    ("artifact.hash", record.get("release_id")),
                ]
            ),
            "status": _status(failed, not failed, f"{record['operation']} failed"),
        }
    ]
    for host in sorted(record["hosts"]):
        outcome = record["hosts"][host]
        host_status = outcome["status"]
        host_failed = host_status in _FAILED_HOST
        host_good = host_status in _GOOD_HOST
        deployment_status = "failed" if host_failed else "succeeded" if host_good else None
        attributes = [
            (key, value)
            for key, value in _operation_attributes(record)
            if key != "deployment.status"
        ]
        spans.append(
            {
                "traceId": trace_id(op_id),
                "spanId": span_id(op_id, host),
                "parentSpanId": parent,
                "name": f"{record['operation']} {host}",
                "kind": SPAN_KIND_INTERNAL,
                "startTimeUnixNano": unix_nanos(outcome.get("started") or record["started"]),
                "endTimeUnixNano": unix_nanos(outcome.get("finished") or record["finished"]),
                "attributes": _attributes(
                    [
                        *attributes,
                        ("deployment.status", deployment_status),
                        ("deployment.target.name", host),
                        ("artifact.hash", outcome.get("release_id")),
                        ("chassis.host.status", host_status),
                    ]
                ),
                "status": _status(host_failed, host_good, f"{host}: {host_status}"),
            }
        )
    return spans


def _resource() -> dict[str, Any]:
    return {"attributes": _attributes([("service.name", SERVICE_NAME)])}


def trace_request(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """An ExportTraceServiceRequest: one span per operation, one child per host."""
    spans: list[dict[str, Any]] = []
    for record in records:
        check_record(record)
        spans += _spans(record)
    return {
        "resourceSpans": [
            {
                "resource": _resource(),
                "scopeSpans": [{"scope": {"name": SCOPE_NAME}, "spans": spans}],
            }
        ]
    }


def logs_request(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """An ExportLogsServiceRequest: one record per receipt, its body the DSSE envelope."""
    log_records: list[dict[str, Any]] = []
    for record in records:
        check_record(record)
        failed = record["status"] == "failed"
        finished = unix_nanos(record["finished"])
        log_records.append(
            {
                "timeUnixNano": finished,
                "observedTimeUnixNano": finished,
                "severityNumber": SEVERITY_ERROR if failed else SEVERITY_INFO,
                "severityText": "ERROR" if failed else "INFO",
                "body": {"stringValue": canonical_json(dict(record["envelope"])).decode()},
                "attributes": _attributes(
                    [
                        *_operation_attributes(record),
                        ("deployment.target.name", record["app"]),
                        ("artifact.hash", record.get("release_id")),
                    ]
                ),
                "traceId": trace_id(record["op_id"]),
                "spanId": span_id(record["op_id"]),
            }
        )
    return {
        "resourceLogs": [
            {
                "resource": _resource(),
                "scopeLogs": [{"scope": {"name": SCOPE_NAME}, "logRecords": log_records}],
            }
        ]
    }
