"""The event-sourced core of Chassis.

Every fact Chassis knows is an event in this ledger: signed with Ed25519,
hash-chained per aggregate, stored through the ``eventsourcing`` library in
SQLite or PostgreSQL. Nothing here imports any other Chassis package.
"""

from ledger.aggregate import LedgerAggregate
from ledger.application import Ledger
from ledger.canonical import EVENT_DIGEST_TAG, GENESIS
from ledger.consents import Consent
from ledger.errors import (
    ConflictError,
    KeyFileError,
    LedgerError,
    NotAuthorisedError,
    StorageError,
)
from ledger.events import LedgerEvent, event_type_for_topic
from ledger.evolution import EvolutionRun
from ledger.hosts import Host, HostSettings
from ledger.installations import Installation, LeaseHeldError
from ledger.keys import KeyPair, generate_keypair, keyid_for, load_keypair
from ledger.models import ModelAsset
from ledger.records import SealedRecord, parse_record
from ledger.releases import Release
from ledger.secrets import Secret
from ledger.storage import StorageConfig, open_ledger
from ledger.trust import Role, Trust

__all__ = [
    "EVENT_DIGEST_TAG",
    "GENESIS",
    "ConflictError",
    "Consent",
    "EvolutionRun",
    "Host",
    "HostSettings",
    "Installation",
    "KeyFileError",
    "KeyPair",
    "LeaseHeldError",
    "Ledger",
    "LedgerAggregate",
    "LedgerError",
    "LedgerEvent",
    "ModelAsset",
    "NotAuthorisedError",
    "Release",
    "Role",
    "SealedRecord",
    "Secret",
    "StorageConfig",
    "StorageError",
    "Trust",
    "event_type_for_topic",
    "generate_keypair",
    "keyid_for",
    "load_keypair",
    "open_ledger",
    "parse_record",
]
