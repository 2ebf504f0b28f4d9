"""Every topic's payload schema as plain data, for the format guide.

``guides/ledger-format.md`` Appendix A prints :func:`topic_table` so that an
independent verifier can check ``bad-payload`` and ``wrong-aggregate``
without reading Chassis code; a test keeps the two equal.

The schema language is deliberately small:

- ``"string"``, ``"integer"``, ``"boolean"``, ``"null"``, ``"any"`` (any
  JSON value);
- ``{"array": T}``: an array whose items are ``T``;
- ``{"map": T}``: an object with any member names whose values are ``T``;
- ``{"object": {NAME: T, ...}}``: an object with exactly these members;
- ``{"anyOf": [T, ...]}``: one of the alternatives.
"""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi

# Every aggregate of the ledger, so that each topic is registered here.
import ledger.consents
import ledger.evolution
import ledger.hosts
import ledger.installations
import ledger.models
import ledger.releases
import ledger.secrets
import ledger.trust  # noqa: F401
from ledger.events import ENVELOPE_FIELDS, registered_topics


def type_schema(info: mi.Type) -> Any:
    """The schema of one msgspec type. Raises ``TypeError`` for a type the
    language above cannot state (so a new kind of field is noticed)."""
    simple: dict[type[mi.Type], str] = {
        mi.StrType: "string",
        mi.IntType: "integer",
        mi.BoolType: "boolean",
        mi.NoneType: "null",
        mi.AnyType: "any",
    }
    for kind, name in simple.items():
        if isinstance(info, kind):
            return name
    if isinstance(info, mi.ListType):
        return {"array": type_schema(info.item_type)}
    if isinstance(info, mi.DictType):
        if not isinstance(info.key_type, mi.StrType):
            raise TypeError(f"object keys must be strings, not {info.key_type}")
        return {"map": type_schema(info.value_type)}
    if isinstance(info, mi.UnionType):
        return {"anyOf": [type_schema(t) for t in info.types]}
    if isinstance(info, mi.StructType):
        return {"object": {f.encode_name: type_schema(f.type) for f in info.fields}}
    raise TypeError(f"no schema for {info}")


def topic_table(prefix: str = "chassis.") -> dict[str, dict[str, Any]]:
    """topic → kind, role, whether it creates its aggregate, payload schema."""
    table: dict[str, dict[str, Any]] = {}
    for topic, event_type in sorted(registered_topics().items()):
        if not topic.startswith(prefix):
            continue
        info = mi.type_info(event_type)
        assert isinstance(info, mi.StructType)
        table[topic] = {
            "kind": event_type.OWNER_KIND,
            "role": event_type.ROLE,
            "creates": event_type.CREATES,
            "payload": {
                f.encode_name: type_schema(f.type)
                for f in info.fields
                if f.name not in ENVELOPE_FIELDS
            },
        }
    return table
