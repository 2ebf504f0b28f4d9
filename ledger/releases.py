"""Releases: a bundle plus its configuration, identified by content.

``release_id = sha256("chassis.release.v1" ‖ 0x00 ‖ bundle_sha256 ‖ 0x00 ‖
config_digest)`` where ``config_digest = sha256(canonical(config))``. The same
id names the release on every host (``releases/<id[:16]>``). A label, once
registered, always means the same content.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

from ledger.aggregate import LedgerAggregate
from ledger.canonical import canonical_json
from ledger.errors import DomainRuleError
from ledger.events import LedgerEvent

RELEASE_TAG = b"chassis.release.v1\x00"


def config_digest(config: dict[str, str]) -> str:
    return hashlib.sha256(canonical_json(config)).hexdigest()


def release_id_for(bundle_sha256: str, config: dict[str, str]) -> str:
    data = RELEASE_TAG + bundle_sha256.encode() + b"\x00" + config_digest(config).encode()
    return hashlib.sha256(data).hexdigest()


def release_dir_name(release_id: str) -> str:
    """The directory of a release on a host: the first 16 hex digits of its id."""
    return release_id[:16]


class Release(LedgerAggregate):
    KIND = "release"
    app: str
    label: str
    release_id: str
    bundle_sha256: str
    bundle_size: int
    config: dict[str, str]
    source: str

    class Registered(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.release.registered.v1"
        ROLE: ClassVar[str] = "operator"
        CREATES: ClassVar[bool] = True
        app: str
        label: str
        release_id: str
        bundle_sha256: str
        bundle_size: int
        config: dict[str, str]
        config_digest: str
        source: str

        def apply(self, aggregate: Release) -> None:
            aggregate.app = self.app
            aggregate.label = self.label
            aggregate.release_id = self.release_id
            aggregate.bundle_sha256 = self.bundle_sha256
            aggregate.bundle_size = self.bundle_size
            aggregate.config = dict(self.config)
            aggregate.source = self.source

    @classmethod
    def key(cls, app: str, label: str) -> str:
        return f"{app}/{label}"

    @classmethod
    def register(
        cls,
        *,
        app: str,
        label: str,
        bundle_sha256: str,
        bundle_size: int,
        config: dict[str, str],
        source: str,
        actor: str,
    ) -> Release:
        return cls.create(
            cls.Registered,
            id=cls.id_for(cls.key(app, label)),
            keyid=actor,
            app=app,
            label=label,
            release_id=release_id_for(bundle_sha256, config),
            bundle_sha256=bundle_sha256,
            bundle_size=bundle_size,
            config=config,
            config_digest=config_digest(config),
            source=source,
        )

    def check_same(self, bundle_sha256: str, config: dict[str, str]) -> None:
        """A label is immutable: raise unless this is the same content."""
        if release_id_for(bundle_sha256, config) != self.release_id:
            raise DomainRuleError(
                f"release {self.label!r} of {self.app} is already registered with other content "
                f"(id {self.release_id[:16]}); use a new label"
            )
