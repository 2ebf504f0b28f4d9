"""CloudEvents 1.0 (structured JSON) carrying CDEvents, from receipt records.

Attributes: ``specversion`` "1.0"; ``id`` = the receipt digest (the same
receipt always has the same id, so consumers can deduplicate); ``source`` =
``/chassis/<app>/<environment>`` (segments percent-encoded); ``type``;
``subject`` = the app; ``time`` = when the operation finished;
``datacontenttype`` "application/json"; and two extensions:
``chassisreceiptdigest`` (the receipt digest) and ``traceparent`` (W3C trace
context pointing at the operation span of the OTLP export, so an event and
its trace can be joined).

Types (CDEvents 0.4 service events, v0.2.0):

* a succeeded ``deploy`` with ``first: true`` -> ``dev.cdevents.service.deployed.0.2.0``
* a succeeded ``deploy`` otherwise -> ``dev.cdevents.service.upgraded.0.2.0``
* a succeeded ``rollback`` -> ``dev.cdevents.service.rolledback.0.2.0``
* anything else (failed operations, recover, lease-break, inventory,
  admission, repair) has no CDEvents type: ``dev.chassis.<operation>.<status>.0.1.0``.

For CDEvents types, ``data`` is the CDEvent: ``context`` (version 0.4.1, the
same id, source, type and timestamp) and ``subject`` (``id`` the app, ``type``
"service", ``content.environment.id`` the environment, ``content.artifactId``
a purl ``pkg:generic/<app>@<label>?checksum=sha256:<release id>``), with our
own summary in ``customData``. For chassis types ``data`` is that summary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from proofs.export import check_record
from proofs.export.otlp import span_id, trace_id

SPECVERSION = "1.0"
CDEVENTS_VERSION = "0.4.1"
SERVICE_DEPLOYED = "dev.cdevents.service.deployed.0.2.0"
SERVICE_UPGRADED = "dev.cdevents.service.upgraded.0.2.0"
SERVICE_ROLLEDBACK = "dev.cdevents.service.rolledback.0.2.0"
EXTENSION_RECEIPT_DIGEST = "chassisreceiptdigest"
CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
)
EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
"""CloudEvents attribute names: lowercase ASCII letters and digits, at most 20 (SHOULD)."""


def event_type(record: Mapping[str, Any]) -> str:
    """The CloudEvents ``type`` of a record (see the module docstring)."""
    operation, status = record["operation"], record["status"]
    if status == "succeeded" and operation == "deploy":
        return SERVICE_DEPLOYED if record.get("first", False) else SERVICE_UPGRADED
    if status == "succeeded" and operation == "rollback":
        return SERVICE_ROLLEDBACK
    return f"dev.chassis.{operation}.{status}.0.1.0"


def source(record: Mapping[str, Any]) -> str:
    """``/chassis/<app>/<environment>``, a URI-reference."""
    return f"/chassis/{quote(record['app'], safe='')}/{quote(record['environment'], safe='')}"


def artifact_id(record: Mapping[str, Any]) -> str:
    """A package URL for the release: ``pkg:generic/<app>[@<label>][?checksum=sha256:<id>]``."""
    purl = f"pkg:generic/{quote(record['app'], safe='')}"
    if record.get("label"):
        purl += f"@{quote(record['label'], safe='')}"
    if record.get("release_id"):
        purl += f"?checksum=sha256:{record['release_id']}"
    return purl


def _summary(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "operation": record["operation"],
        "status": record["status"],
        "opId": record["op_id"],
        "app": record["app"],
        "environment": record["environment"],
        "revision": record.get("revision"),
        "label": record.get("label"),
        "releaseId": record.get("release_id"),
        "receiptDigest": record["receipt_digest"],
        "started": record["started"],
        "finished": record["finished"],
        "hosts": {host: outcome["status"] for host, outcome in sorted(record["hosts"].items())},
    }


def cloudevent(record: Mapping[str, Any]) -> dict[str, Any]:
    """A structured-mode CloudEvent for one receipt record."""
    check_record(record)
    kind = event_type(record)
    digest = record["receipt_digest"]
    event_source = source(record)
    summary = _summary(record)
    data: dict[str, Any]
    if kind.startswith("dev.cdevents."):
        data = {
            "context": {
                "version": CDEVENTS_VERSION,
                "id": digest,
                "source": event_source,
                "type": kind,
                "timestamp": record["finished"],
            },
            "subject": {
                "id": record["app"],
                "type": "service",
                "content": {
                    "environment": {"id": record["environment"]},
                    "artifactId": artifact_id(record),
                },
            },
            "customData": summary,
            "customDataContentType": "application/json",
        }
    else:
        data = summary
    return {
        "specversion": SPECVERSION,
        "id": digest,
        "source": event_source,
        "type": kind,
        "subject": record["app"],
        "time": record["finished"],
        "datacontenttype": "application/json",
        EXTENSION_RECEIPT_DIGEST: digest,
        "traceparent": f"00-{trace_id(record['op_id'])}-{span_id(record['op_id'])}-01",
        "data": data,
    }
