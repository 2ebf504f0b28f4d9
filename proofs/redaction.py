"""Redaction of secrets from receipts, exports, logs, errors and ``--json`` output.

Receipts are signed and exported to third parties, so a secret that reaches
one can never be taken back. Redaction is therefore conservative: a false
positive costs a readable value, a false negative leaks a credential.

What is redacted
----------------
* The whole value under a **secret-like key**. A key is split into segments
  at non-alphanumerics and camelCase boundaries (``x-api-key`` ->
  ``x api key``, ``apiKey`` -> ``api key``, ``DB_PASSWORD`` -> ``db
  password``); it is secret-like when a segment is one of ``password passwd
  pwd pass passphrase secret secrets token tokens auth authorization cookie
  cookies credential credentials session sessions apikey privatekey`` or two
  adjacent segments read ``api key``, ``private key`` or ``access key``, or
  when its letters run together contain ``password``, ``passwd``, ``secret``,
  ``token``, ``apikey``, ``privatekey``, ``credential``, ``authorization``,
  ``cookie`` or ``session``. So ``token_count`` and ``session_id`` are
  secret-like on purpose. ``None`` and booleans under such a key are kept (they
  carry no secret); any other value (string, number, list, object) is replaced
  whole.
* **Secret-looking text** anywhere in a string, whatever its key: PEM private
  key blocks (``-----BEGIN ... PRIVATE KEY-----`` to the matching END line, or
  to the end of the text when truncated), the credentials after ``Bearer`` or
  ``Basic``, the password of a URL (``scheme://user:pass@host`` keeps ``user``
  and ``host``), ``name=value`` / ``name: value`` pairs whose name is
  secret-like (``DB_PASSWORD=x``, ``?token=x``, ``"apiKey": "x"``), and common
  token shapes: GitHub (``ghp_`` ``gho_`` ``ghu_`` ``ghs_`` ``ghr_``
  ``github_pat_``), AWS access key ids (``AKIA``/``ASIA`` + 16), Slack
  (``xox?-``), Stripe (``sk_live_``/``rk_live_``), Google API keys (``AIza``)
  and JWTs (``eyJ...`` ``.eyJ...`` ``.sig``).
* Dictionary keys are scanned like strings too (a host key can be a URL).

The marker
----------
A redacted value becomes ``[redacted:hmac-sha256:<h>]`` where ``<h>`` is the
first 16 lowercase hex digits of ``HMAC-SHA256(key, v)``: ``key`` is the
per-ledger redaction key the caller passes (at least 16 bytes, kept
secret), and ``v`` is the UTF-8 of the redacted text, or for a non-string
value under a secret-like key the canonical JSON of the value
(``ledger.canonical``). Equal secrets give equal markers, so two receipts can
be compared without revealing either value; without the key the marker cannot
be tested against guesses. ``scrub_text`` without a redactor (no ledger key
at hand, e.g. a start-up error) writes ``[redacted]``. Redaction is
idempotent: markers are never redacted again.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from collections.abc import Callable
from typing import Any

from ledger.canonical import canonical_json

MARKER_PREFIX = "[redacted:hmac-sha256:"
PLAIN_MARKER = "[redacted]"
MARKER = re.compile(r"\[redacted(?::hmac-sha256:[0-9a-f]{16})?\]")

_SEGMENTS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "tokens",
        "auth",
        "authorization",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "session",
        "sessions",
        "apikey",
        "privatekey",
    }
)
_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key")})
_SUBSTRINGS = (
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "credential",
    "authorization",
    "cookie",
    "session",
)
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")

_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----"
    r".*?(?:-----END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)",
    re.DOTALL,
)
_SCHEME_CREDENTIALS = re.compile(
    r"\b((?i:bearer)|Basic)(\s+)(?!\[redacted)([A-Za-z0-9._~+/=-]{8,})"
)
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@\[\]]*:)([^\s/?#]*)(@)")
_NAME = re.compile(r"""(?<![\w.])(\\?["']|)([A-Za-z_][\w.-]*)\1\s*[:=]\s*""")
_VALUE = re.compile(
    r"""(?![bru]?\\?["']?\[redacted)(?:"""
    r"""([bru]?)("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""  # quoted
    r"""|(\\["'])(.*?)\3"""  # quoted inside an escaped string: \"...\"
    r"""|(["'][^\n]*)"""  # an unterminated quote: the rest of the line
    r"""|([^\s,;&"'\\]+))"""  # bare
)
_TOKEN_SHAPES = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|[sr]k_live_[A-Za-z0-9]{16,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)"
)


def is_secret_key(name: str) -> bool:
    """True when a key of that name may hold a secret (see the module docstring)."""
    words = [word.lower() for word in _WORD.findall(name)]
    if any(word in _SEGMENTS for word in words):
        return True
    if any(pair in _PAIRS for pair in itertools.pairwise(words)):
        return True
    compact = "".join(words)
    return any(fragment in compact for fragment in _SUBSTRINGS)


class Redactor:
    """Redacts with one per-ledger key, so markers are comparable within a ledger."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("a redaction key is at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Redactor(<key>)"

    @staticmethod
    def is_secret_key(name: str) -> bool:
        return is_secret_key(name)

    def marker(self, secret: str | bytes) -> str:
        """The marker standing for ``secret``."""
        data = secret.encode("utf-8", "surrogatepass") if isinstance(secret, str) else secret
        digest = hmac.new(self._key, data, hashlib.sha256).hexdigest()
        return f"{MARKER_PREFIX}{digest[:16]}]"

    def value(self, text: str) -> str:
        """``text`` with every secret-looking part replaced by its marker."""
        return _scan(text, self.marker)

    def data(self, obj: Any) -> Any:
        """A deep copy of ``obj`` with secret-like keys' values and secret-looking text redacted."""
        if isinstance(obj, str):
            return self.value(obj)
        if isinstance(obj, dict):
            result: dict[Any, Any] = {}
            for key, item in obj.items():
                new_key = self.value(key) if isinstance(key, str) else key
                if isinstance(key, str) and is_secret_key(key):
                    result[new_key] = self._whole(item)
                else:
                    result[new_key] = self.data(item)
            return result
        if isinstance(obj, list):
            return [self.data(item) for item in obj]
        if isinstance(obj, tuple):
            return tuple(self.data(item) for item in obj)
        return obj

    def _whole(self, item: Any) -> Any:
        if item is None or isinstance(item, bool):
            return item
        if isinstance(item, str):
            return item if MARKER.fullmatch(item) else self.marker(item)
        if isinstance(item, bytes):
            return self.marker(item)
        try:
            encoded = canonical_json(item)
        except (TypeError, ValueError):
            encoded = repr(item).encode("utf-8", "surrogatepass")
        return self.marker(encoded)


def _scan(text: str, marker: Callable[[str], str]) -> str:
    text = _PEM.sub(lambda m: marker(m.group(0)), text)
    text = _SCHEME_CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}{marker(m.group(3))}", text)
    text = _URL_PASSWORD.sub(_url_password(marker), text)
    text = _redact_pairs(text, marker)
    return _TOKEN_SHAPES.sub(lambda m: marker(m.group(0)), text)


def _url_password(marker: Callable[[str], str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        password = match.group(2)
        if not password or MARKER.fullmatch(password):
            return match.group(0)
        return f"{match.group(1)}{marker(password)}{match.group(3)}"

    return replace


def _redact_pairs(text: str, marker: Callable[[str], str]) -> str:
    """Redact the value after each secret-like ``name=`` / ``name:`` in free text."""
    parts: list[str] = []
    done = 0
    for name in _NAME.finditer(text):
        if name.start() < done or not is_secret_key(name.group(2)):
            continue
        value = _VALUE.match(text, name.end())
        if value is None:
            continue
        prefix, quoted, escaped, inner, open_quote, bare = value.groups()
        if quoted is not None:
            redacted = f"{prefix}{quoted[0]}{marker(quoted[1:-1])}{quoted[0]}"
        elif escaped is not None:
            redacted = f"{escaped}{marker(inner)}{escaped}"
        elif open_quote is not None:
            redacted = f"{open_quote[0]}{marker(open_quote[1:])}"
        else:
            redacted = marker(bare)
        parts += [text[done : value.start()], redacted]
        done = value.end()
    parts.append(text[done:])
    return "".join(parts)


def scrub_text(text: str, redactor: Redactor | None = None) -> str:
    """``text`` (a log line, an exception message) with secret-looking parts redacted.

    Without a redactor the plain ``[redacted]`` marker is used.
    """
    if redactor is not None:
        return redactor.value(text)
    return _scan(text, lambda _secret: PLAIN_MARKER)
