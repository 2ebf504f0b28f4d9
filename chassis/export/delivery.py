"""Delivering outbox items to one destination: an HTTP(S) endpoint or a file.

Delivery is at-least-once with a stable id per item, so receivers deduplicate
by id (``Idempotency-Key``; for CloudEvents also ``ce-id``, the event id).
Items go out in receipt order and each is marked delivered right after it
succeeds. A connection error, timeout, 5xx, 408 or 429 means the endpoint is
not taking items now: the item is rescheduled with exponential backoff and
jitter and the round stops; the rest stay queued, untouched, and automatic
rounds leave them until the same time. Any other
4xx (or a 3xx: redirects are not followed, a POST body would be dropped)
is the endpoint refusing that item: it is rescheduled too, but after
``MAX_ATTEMPTS`` such refusals it is marked failed and reported instead of
being retried forever.

A file destination gets one line per item: the body itself (a bare OTLP
request, a structured CloudEvent, a bare DSSE envelope), the form the
ecosystem's file readers take (the OpenTelemetry Collector's ``otlpjsonfile``
receiver reads what its file exporter writes: one request per line). Items
the file already holds are recognised from the bodies
(``proofs.export.line_keys``), so a crash between writing a line and marking
it delivered never duplicates it. Appending never damages what is there:
whole lines only, under an exclusive lock, flushed and fsynced, and a file
that does not end with a newline (another writer's last line, a torn one)
gets one before the first new line, instead of losing its last line.

Credentials never cross the network in clear text by accident: an
``http://`` destination with user info or a secret-like query parameter is
refused unless the caller passes ``insecure`` (``--insecure``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from chassis import __version__
from chassis.errors import ChassisError
from chassis.export.outbox import Item, Outbox, line_of, now
from proofs.export import line_keys, otlp_path
from proofs.redaction import is_secret_key, scrub_text

MAX_ATTEMPTS = 8
"""Refusals (4xx other than 408/429) before an item is marked failed."""
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
ERROR_CHARS = 300
CONTENT_TYPES = {"cloudevents": "application/cloudevents+json"}


class DestinationError(ChassisError, ValueError):
    """A destination that is neither an http(s) URL nor a file path, or one
    that would send credentials in clear text."""

    exit_code = 2


@dataclass(frozen=True)
class Destination:
    kind: Literal["http", "file"]
    target: str
    """The URL to POST to (without user info), or the absolute file path."""
    key: str
    """How the outbox and all output name it: normalised, any password redacted."""
    authorization: str | None = field(default=None, repr=False)
    """``Basic …`` from user info in the URL, sent as a header instead."""


def parse_destination(text: str, base: Path, *, insecure: bool = False) -> Destination:
    """``http(s)://host[:port][/path]``, ``file:///abs/path`` or a path (relative to ``base``).

    An ``http://`` URL carrying credentials (user info, or a query parameter
    with a secret-like name such as ``?token=``) is refused unless
    ``insecure``: every POST would carry them unencrypted.
    """
    text = text.strip()
    if not text:
        raise DestinationError("empty destination: expected an http(s):// URL or a file path")
    if "://" not in text:
        path = Path(text).expanduser()
        absolute = Path(os.path.normpath(path if path.is_absolute() else base / path))
        return Destination("file", str(absolute), str(absolute))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DestinationError(f"{text}: a file:// URL names no host (file:///abs/path)")
        path_text = unquote(parts.path)
        if not path_text.startswith("/"):
            raise DestinationError(f"{text}: expected an absolute path (file:///abs/path)")
        normal = os.path.normpath(path_text)
        return Destination("file", normal, normal)
    if scheme not in ("http", "https"):
        raise DestinationError(
            f"{scrub_text(text)}: unsupported scheme {parts.scheme!r} "
            "(expected http://, https://, file:// or a file path)"
        )
    try:
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise DestinationError(f"{scrub_text(text)}: {e}") from None
    if not host:
        raise DestinationError(f"{scrub_text(text)}: no host")
    if parts.fragment:
        raise DestinationError(f"{scrub_text(text)}: a destination URL has no #fragment")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        netloc += f":{port}"
    query = f"?{parts.query}" if parts.query else ""
    target = f"{scheme}://{netloc}{parts.path}{query}"
    authorization, shown = None, target
    userinfo_given = parts.username is not None or parts.password is not None
    if userinfo_given:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        authorization = f"Basic {token}"
        # A lone user name may itself be a token: never shown either way.
        userinfo = f"{user}:[redacted]" if parts.password is not None else "[redacted]"
        shown = f"{scheme}://{userinfo}@{netloc}{parts.path}{query}"
    shown = scrub_text(shown)
    if scheme == "http" and not insecure:
        carried = "user info" if userinfo_given else _secret_query(parts.query)
        if carried:
            raise DestinationError(
                f"{shown}: refusing to send credentials ({carried}) over plain http://, "
                "where anyone on the path can read them; use https:// or pass --insecure"
            )
    return Destination("http", target, shown, authorization)


def _secret_query(query: str) -> str | None:
    """``query parameter NAME`` for the first secret-like parameter name, else None."""
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if is_secret_key(name):
            return f"query parameter {name!r}"
    return None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""
    refused: bool = False
    """The endpoint answered and refused this item (4xx other than 408/429)."""


@dataclass
class Round:
    """What one delivery round did."""

    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    """Items marked failed in this round."""
    stopped: str | None = None
    """Why the round ended before its last item (the endpoint's error), if it did."""
    errors: list[str] = field(default_factory=list)


Progress = Callable[[int, int, Item, bool], None]
"""Called after each attempt: (n, of m, the item, delivered?)."""


def backoff(attempts: int) -> timedelta:
    """Exponential in ``attempts``, capped, with jitter (half to full) so many
    exporters that lost the same endpoint do not come back in lockstep."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=ceiling / 2 + ceiling / 2 * secrets.randbelow(1001) / 1000)


def deliver(
    outbox: Outbox,
    destination: Destination,
    *,
    max_items: int | None,
    deadline_s: float,
    timeout_s: float = 2.0,
    due_only: bool = True,
    retry_failed: bool = False,
    progress: Progress | None = None,
) -> Round:
    """Send the destination's pending items in order, within ``deadline_s``.

    ``due_only`` skips items still backing off (automatic rounds); an explicit
    export passes ``False``. ``retry_failed`` gives failed items another go.
    """
    started = time.monotonic()
    token, items = outbox.claim(
        destination.key,
        lease_s=deadline_s + timeout_s + 5,
        due_only=due_only,
        retry_failed=retry_failed,
    )
    result = Round()
    if not items:
        return result
    try:
        with _sender(destination) as send:
            for n, item in enumerate(items, 1):
                remaining = deadline_s - (time.monotonic() - started)
                if (max_items is not None and n > max_items) or remaining <= 0:
                    break
                result.attempted += 1
                outcome = send(item, min(timeout_s, remaining))
                if outcome.ok:
                    outbox.mark_delivered(item)
                    result.delivered += 1
                    retry_at = None
                else:
                    error = scrub_text(outcome.error)[:ERROR_CHARS]
                    result.errors.append(f"{item.item_id}: {error}")
                    give_up = outcome.refused and item.attempts + 1 >= MAX_ATTEMPTS
                    retry_at = None if give_up else now() + backoff(item.attempts + 1)
                    outbox.mark_attempt(item, error, retry_at=retry_at)
                    result.failed += give_up
                if progress is not None:
                    progress(n, len(items), item, outcome.ok)
                if not outcome.ok and not outcome.refused:
                    # The endpoint is down: the rest waits as long as this item.
                    result.stopped = scrub_text(outcome.error)[:ERROR_CHARS]
                    if retry_at is not None:
                        outbox.postpone(destination.key, token, retry_at)
                    break
    finally:
        outbox.release(destination.key, token)
    return result


Send = Callable[[Item, float], Outcome]


@contextlib.contextmanager
def _sender(destination: Destination) -> Iterator[Send]:
    if destination.kind == "http":
        yield lambda item, timeout: _post(destination, item, timeout)
        return
    with _FileSink(Path(destination.target)) as sink:
        yield sink.send


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post(destination: Destination, item: Item, timeout: float) -> Outcome:
    url = destination.target
    if item.format == "otlp-json":
        url = url.rstrip("/") + otlp_path(item.item_id)
    headers = {
        "Content-Type": CONTENT_TYPES.get(item.format, "application/json"),
        "Idempotency-Key": item.item_id,
        "User-Agent": f"chassis/{__version__}",
    }
    if item.format == "cloudevents":
        headers["ce-id"] = item.item_id
    if destination.authorization:
        headers["Authorization"] = destination.authorization
    # parse_destination lets only http and https through.
    request = urllib.request.Request(url, item.body, headers, method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read()
        return Outcome(ok=True)
    except urllib.error.HTTPError as e:
        body = _error_body(e)
        refused = 300 <= e.code < 500 and e.code not in (408, 429)
        return Outcome(ok=False, error=f"HTTP {e.code} {e.reason}{body}", refused=refused)
    except urllib.error.URLError as e:
        return Outcome(ok=False, error=f"cannot reach {destination.key}: {e.reason}")
    except (OSError, http.client.HTTPException) as e:
        return Outcome(ok=False, error=f"{destination.key}: {type(e).__name__}: {e}")


def _error_body(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read(ERROR_CHARS).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""
    return f": {' '.join(text.split())}" if text else ""


class _FileSink:
    """Appends items to a JSON-lines file, each once, under an exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: set[tuple[str, str]] = set()
        self.handle: IO[bytes] | None = None
        self.error: str | None = None
        self.unterminated = False
        """The file ends inside a line: the next write starts with a newline."""

    def __enter__(self) -> _FileSink:
        try:
            self._open()
        except OSError as e:
            # Reported per item like an unreachable endpoint: retried later.
            self.error = f"{self.path}: {e.strerror or e}"
            self.__exit__()
        return self

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        # Append mode: every write lands at the end, whoever else appends.
        handle = self.path.open("a+b")
        self.handle = handle
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        if created:
            _fsync_dir(self.path.parent)
        handle.seek(0)
        last = b""
        for line in handle:
            last = line
            with contextlib.suppress(ValueError):
                self.seen |= line_keys(json.loads(line))
        self.unterminated = bool(last) and not last.endswith(b"\n")

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the lock
            self.handle = None

    def send(self, item: Item, timeout: float) -> Outcome:
        if self.handle is None:
            return Outcome(ok=False, error=self.error or f"{self.path}: not open")
        try:
            keys = line_keys(json.loads(item.body))
        except ValueError as e:
            return Outcome(ok=False, error=f"{item.item_id}: not JSON ({e})", refused=True)
        if keys and keys <= self.seen:
            return Outcome(ok=True)
        line = line_of(item)
        if self.unterminated:
            line = b"\n" + line  # never glue onto, or cut, what is there
        try:
            self.handle.write(line)
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as e:
            return Outcome(ok=False, error=f"{self.path}: {e.strerror or e}")
        self.unterminated = False
        self.seen |= keys
        return Outcome(ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_time(text: str | None) -> str:
    """A next-attempt timestamp as ``<when> (in Ns)`` for summaries."""
    if text is None:
        return "-"
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=now().tzinfo)
    except ValueError:
        return text
    seconds = max(0, round((moment - now()).total_seconds()))
    return f"{text} (in {seconds}s)"
