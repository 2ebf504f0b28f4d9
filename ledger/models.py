"""Model assets: a manifest of files (path, size, sha256) named and recorded,
then materialized on hosts into a content-addressed cache, as events.

``manifest_digest = sha256("chassis.model-manifest.v1" ‖ 0x00 ‖ canonical(files))``
where ``files`` is the list of ``{"path", "size", "sha256"}`` sorted by path
(``guides/model_assets.md``). On a host the model lives in
``<root>/models/sha256/<manifest digest>/`` and ``<root>/models/by-name/<name>``
points at it. One ``model`` aggregate per name (``NAME`` = the model's name);
a new manifest under the same name is a new revision of it.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import msgspec

from ledger.aggregate import LedgerAggregate
from ledger.canonical import canonical_json, format_timestamp
from ledger.errors import DomainRuleError
from ledger.events import LedgerEvent

MANIFEST_TAG = b"chassis.model-manifest.v1\x00"


class ModelFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    """Relative, ``/``-separated, no ``.`` or ``..`` components."""
    size: int
    sha256: str


def manifest_digest(files: list[ModelFile]) -> str:
    ordered = sorted(files, key=lambda f: f.path)
    body = canonical_json([msgspec.to_builtins(f) for f in ordered])
    return hashlib.sha256(MANIFEST_TAG + body).hexdigest()


class ModelAsset(LedgerAggregate):
    KIND = "model"
    name: str
    revisions: list[dict[str, Any]]
    """Each registered manifest: ``{digest, revision, source, files, bytes, at}``."""
    files: dict[str, list[dict[str, Any]]]
    """manifest digest → its files (``{path, size, sha256}``)."""
    placements: dict[str, dict[str, Any]]
    """``HOST/DIGEST`` → ``{host, digest, at, pinned, evicted}``: where it is materialized."""

    class Registered(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.model.registered.v1"
        ROLE: ClassVar[str] = "operator"
        CREATES: ClassVar[bool] = True
        name: str
        revision: str | None
        source: str
        manifest_digest: str
        files: list[ModelFile]
        total_bytes: int

        def apply(self, aggregate: ModelAsset) -> None:
            aggregate.name = self.name
            aggregate.revisions = []
            aggregate.files = {}
            aggregate.placements = {}
            _add_revision(aggregate, self)

    class Revised(LedgerEvent, frozen=True, kw_only=True):
        """Another manifest under the same name (a new model revision)."""

        TOPIC: ClassVar[str] = "chassis.model.revised.v1"
        ROLE: ClassVar[str] = "operator"
        revision: str | None
        source: str
        manifest_digest: str
        files: list[ModelFile]
        total_bytes: int

        def apply(self, aggregate: ModelAsset) -> None:
            _add_revision(aggregate, self)

    class MaterializeStarted(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.model.materialize-started.v1"
        ROLE: ClassVar[str] = "operator"
        host: str
        manifest_digest: str
        plan: dict[str, Any]
        """``{send: [paths], skip: [paths], bytes_to_send, admission: {...}}``."""

        def apply(self, aggregate: ModelAsset) -> None:
            pass

    class FilesPlaced(LedgerEvent, frozen=True, kw_only=True):
        """Per-file outcomes of one materialization, in batches."""

        TOPIC: ClassVar[str] = "chassis.model.files-placed.v1"
        ROLE: ClassVar[str] = "operator"
        host: str
        manifest_digest: str
        outcomes: list[dict[str, Any]]
        """``{path, outcome: sent|skipped|resent|resumed|failed, bytes_sent, sha256, detail}``."""

        def apply(self, aggregate: ModelAsset) -> None:
            pass

    class Materialized(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.model.materialized.v1"
        ROLE: ClassVar[str] = "operator"
        host: str
        manifest_digest: str
        ok: bool
        bytes_sent: int
        files_sent: int
        files_skipped: int
        detail: str

        def apply(self, aggregate: ModelAsset) -> None:
            if not self.ok:
                return
            key = f"{self.host}/{self.manifest_digest}"
            previous = aggregate.placements.get(key, {})
            aggregate.placements[key] = {
                "host": self.host,
                "digest": self.manifest_digest,
                "at": format_timestamp(self.timestamp),
                "pinned": bool(previous.get("pinned", False)),
                "evicted": False,
            }

    class CachePinned(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.model.cache-pinned.v1"
        ROLE: ClassVar[str] = "operator"
        host: str
        manifest_digest: str
        pinned: bool

        def apply(self, aggregate: ModelAsset) -> None:
            placement = aggregate.placements.get(f"{self.host}/{self.manifest_digest}")
            if placement is not None:
                placement["pinned"] = self.pinned

    class Evicted(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.model.evicted.v1"
        ROLE: ClassVar[str] = "operator"
        host: str
        manifest_digest: str
        bytes_freed: int
        reason: str

        def apply(self, aggregate: ModelAsset) -> None:
            placement = aggregate.placements.get(f"{self.host}/{self.manifest_digest}")
            if placement is not None:
                placement["evicted"] = True

    @classmethod
    def register(
        cls,
        *,
        name: str,
        revision: str | None,
        source: str,
        files: list[ModelFile],
        actor: str,
    ) -> ModelAsset:
        ordered = sorted(files, key=lambda f: f.path)
        return cls.create(
            cls.Registered,
            id=cls.id_for(name),
            keyid=actor,
            name=name,
            revision=revision,
            source=source,
            manifest_digest=manifest_digest(ordered),
            files=ordered,
            total_bytes=sum(f.size for f in ordered),
        )

    def revise(
        self, *, revision: str | None, source: str, files: list[ModelFile], actor: str
    ) -> bool:
        """Record another manifest; False (nothing appended) when it is the newest already."""
        ordered = sorted(files, key=lambda f: f.path)
        digest = manifest_digest(ordered)
        if self.revisions and self.revisions[-1]["digest"] == digest:
            return False
        self.trigger(
            self.Revised,
            keyid=actor,
            revision=revision,
            source=source,
            manifest_digest=digest,
            files=ordered,
            total_bytes=sum(f.size for f in ordered),
        )
        return True

    @property
    def current(self) -> dict[str, Any]:
        return self.revisions[-1]

    def manifest(self, digest: str | None = None) -> list[ModelFile]:
        chosen = digest or self.current["digest"]
        if chosen not in self.files:
            raise DomainRuleError(f"model {self.name!r} has no manifest {chosen[:16]}")
        return [msgspec.convert(f, ModelFile) for f in self.files[chosen]]


def _add_revision(aggregate: ModelAsset, event: ModelAsset.Registered | ModelAsset.Revised) -> None:
    aggregate.revisions.append(
        {
            "digest": event.manifest_digest,
            "revision": event.revision,
            "source": event.source,
            "files": len(event.files),
            "bytes": event.total_bytes,
            "at": format_timestamp(event.timestamp),
        }
    )
    aggregate.files[event.manifest_digest] = [msgspec.to_builtins(f) for f in event.files]
