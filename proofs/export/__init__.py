"""Export of receipts to the tracing plane: OTLP/JSON, CloudEvents, raw DSSE.

Everything here is pure formatting of a *receipt record* (below): no I/O, no
clock, so the same record always renders to the same bytes and the outbox can
deliver each item at most once under its stable id.

Records must be redacted (``proofs.redaction``) before they are rendered;
nothing here redacts or checks for secrets.

Receipt record
--------------
::

    {"receipt_digest": "<64 hex>",        # proofs.dsse.envelope_digest(envelope)
     "envelope": {...},                   # the DSSE envelope of the receipt
     "statement": {...},                  # its in-toto Statement v1
     "operation": "deploy" | "rollback" | "recover" | "lease-break"
                  | "inventory" | "admission" | "repair" | "restart" | "remove"
                  | "materialize" | "expire-lease",
     "status": "succeeded" | "failed",
     "op_id": "<32 hex>",                 # becomes the OTLP trace id
     "app": str, "environment": str,
     "revision": int | None, "label": str | None,
     "release_id": "<64 hex>" | None,     # sha256 of bundle + rendered config
     "started": RFC 3339, "finished": RFC 3339,
     "hosts": {host: {"status": str, "release_id": str | None,
                      "started": RFC 3339, "finished": RFC 3339}},
     "first": bool}                       # optional, default false: a deploy
                                          # that installed the app in this
                                          # environment for the first time

Rendered items
--------------
``render`` returns ``(id, body)`` pairs:

* ``dsse``: one per record, ``id`` = receipt digest, body = the canonical JSON
  of the envelope (so ``sha256(body) == id``).
* ``cloudevents``: one structured-mode CloudEvent per record, ``id`` = receipt
  digest (also the event's ``id``).
* ``otlp-json``: two per record, because traces and logs go to different OTLP
  endpoints: ``<digest>.traces`` (an ExportTraceServiceRequest, POST to
  ``/v1/traces``) and ``<digest>.logs`` (an ExportLogsServiceRequest, POST to
  ``/v1/logs``); ``otlp_path(id)`` gives the path.

Every body is one line of compact JSON, exactly the object its ecosystem
reads: a bare OTLP request (what the OpenTelemetry Collector's file exporter
writes and its ``otlpjsonfile`` receiver reads), a structured-mode
CloudEvent, a bare DSSE envelope. No wrapper carries the item id: a file
destination recognises what it already holds from the bodies themselves
(``line_keys``): the CloudEvent ``id``, the OTLP ``artifact.attestation.hash``
attribute of each span or log record with the signal, and for an envelope,
which has no free field, the sha256 of its decoded payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, NotRequired, TypedDict

FORMATS = ("otlp-json", "cloudevents", "dsse")
OPERATIONS = (
    "deploy",
    "rollback",
    "recover",
    "lease-break",
    "inventory",
    "admission",
    "repair",
    "restart",
    "remove",
    "materialize",
    "expire-lease",
)
STATUSES = ("succeeded", "failed")
OTLP_PATHS = {"traces": "/v1/traces", "logs": "/v1/logs"}

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


class HostOutcome(TypedDict):
    status: str
    release_id: str | None
    started: str
    finished: str


class ReceiptRecord(TypedDict):
    """The input of every exporter; see the module docstring."""

    receipt_digest: str
    envelope: dict[str, Any]
    statement: dict[str, Any]
    operation: str
    status: str
    op_id: str
    app: str
    environment: str
    revision: int | None
    label: str | None
    release_id: str | None
    started: str
    finished: str
    hosts: dict[str, HostOutcome]
    first: NotRequired[bool]


def check_record(record: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field that does not fit the record shape."""

    def fail(field: str, expected: str) -> None:
        raise ValueError(f"receipt record: {field!r} must be {expected}, got {record.get(field)!r}")

    for field, pattern, expected in (
        ("receipt_digest", _HEX64, "64 lowercase hex digits"),
        ("op_id", _HEX32, "32 lowercase hex digits"),
    ):
        value = record.get(field)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            fail(field, expected)
    if record["op_id"] == "0" * 32:
        fail("op_id", "non-zero")
    if record.get("operation") not in OPERATIONS:
        fail("operation", f"one of {', '.join(OPERATIONS)}")
    if record.get("status") not in STATUSES:
        fail("status", "succeeded or failed")
    for field in ("app", "environment"):
        value = record.get(field)
        if not isinstance(value, str) or not value:
            fail(field, "a non-empty string")
    for field in ("envelope", "statement", "hosts"):
        if not isinstance(record.get(field), Mapping):
            fail(field, "an object")
    revision = record.get("revision")
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int)):
        fail("revision", "an integer or null")
    if record.get("label") is not None and not isinstance(record.get("label"), str):
        fail("label", "a string or null")
    release = record.get("release_id")
    if release is not None and (not isinstance(release, str) or not _HEX64.fullmatch(release)):
        fail("release_id", "64 lowercase hex digits or null")
    for field in ("started", "finished"):
        value = record.get(field)
        if not isinstance(value, str) or not RFC3339.fullmatch(value):
            fail(field, "an RFC 3339 timestamp")
    if not isinstance(record.get("first", False), bool):
        fail("first", "a boolean")
    for host, outcome in record["hosts"].items():
        if not isinstance(host, str) or not host or not isinstance(outcome, Mapping):
            raise ValueError(f"receipt record: host {host!r} must map a name to an object")
        if not isinstance(outcome.get("status"), str):
            raise ValueError(f"receipt record: host {host!r}: 'status' must be a string")
        for field in ("started", "finished"):
            value = outcome.get(field)
            if value is not None and (not isinstance(value, str) or not RFC3339.fullmatch(value)):
                raise ValueError(f"receipt record: host {host!r}: {field!r} must be RFC 3339")


def otlp_path(item_id: str) -> str:
    """The OTLP/HTTP path an ``otlp-json`` item goes to (``/v1/traces`` or ``/v1/logs``)."""
    signal = item_id.rpartition(".")[2]
    if signal not in OTLP_PATHS:
        raise ValueError(f"{item_id!r} is not an otlp-json item id")
    return OTLP_PATHS[signal]


ATTESTATION_ATTRIBUTE = "artifact.attestation.hash"


def line_keys(document: Any) -> set[tuple[str, str]]:
    """What one exported JSON document stands for, as ``(format, key)`` pairs:
    a file destination skips an item whose keys it already holds, so a crash
    between writing a line and marking it delivered never duplicates it.

    ``("cloudevents", id)`` for a CloudEvent; ``("otlp-json", "<digest>.traces")``
    / ``".logs"`` for each span or log record carrying the receipt digest in
    ``artifact.attestation.hash`` (a Collector may batch several receipts in
    one line); ``("dsse", "payload:<sha256 of the decoded payload>")`` for an
    envelope. Anything else (another writer's line, a torn one) stands for
    nothing.
    """
    if not isinstance(document, dict):
        return set()
    if isinstance(document.get("specversion"), str) and isinstance(document.get("id"), str):
        return {("cloudevents", document["id"])}
    if isinstance(document.get("payload"), str) and "payloadType" in document:
        try:
            payload = base64.b64decode(document["payload"], validate=True)
        except (binascii.Error, ValueError):
            return set()
        return {("dsse", f"payload:{hashlib.sha256(payload).hexdigest()}")}
    keys: set[tuple[str, str]] = set()
    for signal, resources, scopes, entries in (
        ("traces", "resourceSpans", "scopeSpans", "spans"),
        ("logs", "resourceLogs", "scopeLogs", "logRecords"),
    ):
        for entry in _nested(document, resources, scopes, entries):
            for attribute in _list(entry.get("attributes")):
                if not isinstance(attribute, dict) or attribute.get("key") != ATTESTATION_ATTRIBUTE:
                    continue
                value = attribute.get("value")
                digest = value.get("stringValue") if isinstance(value, dict) else None
                if isinstance(digest, str):
                    keys.add(("otlp-json", f"{digest}.{signal}"))
    return keys


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _nested(document: dict[str, Any], *path: str) -> Iterable[dict[str, Any]]:
    level: list[Any] = [document]
    for name in path:
        level = [
            item for parent in level if isinstance(parent, dict) for item in _list(parent.get(name))
        ]
    return [item for item in level if isinstance(item, dict)]


def render(format: str, records: Iterable[Mapping[str, Any]]) -> list[tuple[str, bytes]]:
    """The ``(stable id, body)`` pairs to deliver for ``records`` in ``format``."""
    # Imported here: the exporters import this module for the record shape.
    from ledger.canonical import canonical_json
    from proofs.export.cloudevents import cloudevent
    from proofs.export.otlp import logs_request, trace_request

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    items: list[tuple[str, bytes]] = []
    for record in records:
        check_record(record)
        digest = record["receipt_digest"]
        if format == "dsse":
            items.append((digest, canonical_json(dict(record["envelope"]))))
        elif format == "cloudevents":
            items.append((digest, canonical_json(cloudevent(record))))
        else:
            items.append((f"{digest}.traces", canonical_json(trace_request([record]))))
            items.append((f"{digest}.logs", canonical_json(logs_request([record]))))
    return items
