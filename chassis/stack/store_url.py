"""Where release bundles are kept beside the ledger: ``[releases] store``.

One string, so that it never collides with a release label (labels are
tables, ``[releases.LABEL]``):

- ``"ledger"``: in the ledger's own database (the default for PostgreSQL);
- ``"workspace"``: only in this workspace's ``.chassis/bundles`` (the
  default for SQLite);
- ``"s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]"``: in an
  S3-compatible object store. ``endpoint`` names a server other than AWS
  (MinIO, Ceph, rclone, …); credentials come from the usual AWS sources
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an
  instance role), never from this file.

Standard library only: ``stack validate`` checks it without loading a client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
"""S3's bucket naming rule (3–63 lowercase letters, digits, dots, hyphens)."""
PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
REGION = re.compile(r"[a-z0-9-]{1,32}")
QUERY_KEYS = ("endpoint", "region")


@dataclass(frozen=True)
class StoreURL:
    kind: Literal["ledger", "workspace", "s3"]
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    def describe(self) -> str:
        """How messages name it (no credentials are ever part of it)."""
        if self.kind != "s3":
            return f"the {self.kind} store"
        where = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        return where + (f" at {self.endpoint}" if self.endpoint else "")

    def key(self, name: str) -> str:
        """The object key of ``name`` under the prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name


def parse_store_url(value: str) -> StoreURL:
    """The store ``value`` names; ``ValueError`` saying what was expected."""
    if value == "ledger":
        return StoreURL("ledger")
    if value == "workspace":
        return StoreURL("workspace")
    expected = '"ledger", "workspace" or "s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]"'
    parts = urlsplit(value)
    if (
        "@" in parts.netloc
        or "@" in urlsplit(dict(parse_qsl(parts.query)).get("endpoint", "")).netloc
    ):
        # Said before anything that would echo the value.
        raise ValueError(
            "credentials never go in chassis.toml (it is shared and checked in); "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    if parts.scheme != "s3":
        raise ValueError(f"expected {expected}, found {value!r}")
    if not BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
        raise ValueError(
            f"bucket {parts.netloc!r}: expected 3-63 lowercase letters, digits, dots or hyphens"
        )
    prefix = parts.path.strip("/")
    if prefix and (not PREFIX.fullmatch(prefix) or {".", ".."} & set(prefix.split("/"))):
        raise ValueError(
            f"prefix {prefix!r}: expected path segments of letters, digits, '.', '_' or '-'"
        )
    query: dict[str, str] = {}
    for key, item in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in QUERY_KEYS:
            raise ValueError(f"unknown option {key!r} (expected {', '.join(QUERY_KEYS)})")
        query[key] = item
    endpoint = query.get("endpoint")
    if endpoint is not None:
        where = urlsplit(endpoint)
        if where.scheme not in ("http", "https") or not where.hostname:
            raise ValueError(f"endpoint {endpoint!r}: expected http(s)://HOST[:PORT]")
    region = query.get("region")
    if region is not None and not REGION.fullmatch(region):
        raise ValueError(f"region {region!r}: expected lowercase letters, digits and hyphens")
    return StoreURL("s3", parts.netloc, prefix, endpoint, region)
