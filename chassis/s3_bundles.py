"""Release bundles in an S3-compatible object store (``[releases] store =
"s3://…"``): any operator or CI runner with the bucket's credentials can
deploy and roll back any recorded release, whatever ledger it shares.

Each bundle is one object, ``<prefix>/bundles/<sha256>.tar.gz``, written once
(its presence is checked first; a second writer of the same sha256 writes
the same bytes). It is verified by sha256 and size whenever it is read back
into the workspace's store, which stays the cache every host step uploads
from: the object store is trusted for availability only, never for content.

boto3 is imported here alone, on first use: no other command pays for it.
Credentials come from boto3's own chain (environment, ``AWS_PROFILE``,
instance role); messages name the bucket and the server's error code, never
a key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from chassis.errors import ChassisError
from chassis.stack.store_url import StoreURL

_TIMEOUT_S = 30
_ATTEMPTS = 3


class StoreError(ChassisError):
    """The object store could not be reached or refused the request."""

    exit_code = 3


_data_loader: Any = None
"""botocore's loader of its own data files (endpoints, the S3 model), kept
for the process: a new session's loader parses ~60 ms of JSON again for
each client, and one command may make several (add, then resolve)."""


def _botocore_session() -> Any:
    """A new botocore session (credentials, region and config are read
    afresh) sharing the process's data loader: it caches only botocore's
    packaged data, never anything of a store's or a user's."""
    global _data_loader
    import botocore.session

    session = botocore.session.get_session()
    if _data_loader is None:
        _data_loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _data_loader)
    return session


class S3Bundles:
    def __init__(self, location: StoreURL) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StoreError(
                f"{location.describe()}: an S3 release store needs boto3: "
                "pip install 'chassis-ledger[s3]'"
            ) from None
        self.location = location
        session = boto3.session.Session(botocore_session=_botocore_session())
        if session.get_credentials() is None:
            raise StoreError(
                f"{location.describe()}: no credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        self._client: Any = session.client(
            "s3",
            endpoint_url=location.endpoint,
            region_name=location.region or session.region_name or "us-east-1",
            config=Config(
                connect_timeout=_TIMEOUT_S,
                read_timeout=_TIMEOUT_S,
                retries={"max_attempts": _ATTEMPTS, "mode": "standard"},
                # Path-style addressing works with every S3-compatible
                # server; virtual hosts need DNS for each bucket.
                s3={"addressing_style": "path"} if location.endpoint else {},
            ),
        )

    def describe(self) -> str:
        return self.location.describe()

    def _key(self, sha256: str) -> str:
        return self.location.key(f"bundles/{sha256}.tar.gz")

    def _failure(self, doing: str, error: Exception) -> StoreError:
        return StoreError(f"{self.describe()}: {doing}: {_reason(error)}")

    def check(self) -> str | None:
        """Why this store cannot be used now (bucket, credentials, endpoint),
        or None; reads nothing but the bucket's existence."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.location.bucket)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchBucket", "NotFound"):
                return "the bucket does not exist (create it first)"
            return _reason(e)
        except BotoCoreError as e:
            return _reason(e)
        return None

    def has(self, sha256: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_object(Bucket=self.location.bucket, Key=self._key(sha256))
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._failure(f"cannot look for bundle {sha256[:16]}", e) from None
        except BotoCoreError as e:
            raise self._failure(f"cannot look for bundle {sha256[:16]}", e) from None
        return True

    def put(self, sha256: str, path: Path) -> bool:
        """Store ``path`` (whose sha256 the caller checked) unless it is
        there; returns whether it was written now."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        if self.has(sha256):
            return False
        try:
            self._client.upload_file(
                str(path),
                self.location.bucket,
                self._key(sha256),
                ExtraArgs={"Metadata": {"sha256": sha256}},
            )
        except (ClientError, BotoCoreError, Boto3Error) as e:
            # An upload failure wraps the server's answer: name that.
            cause = e.__context__ if isinstance(e, Boto3Error) and e.__context__ else e
            raise self._failure(f"cannot store bundle {sha256[:16]}", cause) from None
        return True

    def fetch(self, sha256: str, dest: Path) -> str | None:
        """Write the bundle to ``dest`` (atomically) if the store holds it and
        its bytes hash to ``sha256``; returns why not, or None."""
        from botocore.exceptions import BotoCoreError, ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.fetch")
        try:
            try:
                self._client.download_file(self.location.bucket, self._key(sha256), str(tmp))
            except ClientError as e:
                if _code(e) in ("404", "NoSuchKey", "NotFound"):
                    return f"{self.describe()} does not hold it either"
                return f"{self.describe()}: {_reason(e)}"
            except BotoCoreError as e:
                return f"{self.describe()}: {_reason(e)}"
            digest = hashlib.sha256()
            with tmp.open("rb") as got:
                while chunk := got.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                return (
                    f"the copy in {self.describe()} does not match: sha256 "
                    f"{digest.hexdigest()}, {tmp.stat().st_size} bytes (expected {sha256})"
                )
            tmp.replace(dest)
            return None
        finally:
            tmp.unlink(missing_ok=True)


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _reason(error: Exception) -> str:
    """The server's code and message, or the client's one line: never a
    request (its headers carry the signature)."""
    code = _code(error)
    if code:
        response = getattr(error, "response", None) or {}
        message = str(response.get("Error", {}).get("Message", "")).strip()
        if code == "NoSuchBucket":
            return "the bucket does not exist (create it first)"
        if code in ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
            message = message if message and message != "Forbidden" else "access denied"
            return f"{code}: {message} (check the credentials and their access to the bucket)"
        return f"{code}: {message}" if message else code
    return str(error).splitlines()[0] if str(error) else type(error).__name__
