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

What is not redacted
--------------------
The patterns read Chassis's own messages too (an error naming the key
``DB_PASSWORD`` or a bundle member ``'token'``), so two shapes that read as
prose are left alone: a ``name:`` pair (colon and space) whose value is a
lowercase word followed by another word (``DB_PASSWORD: looks like a
secret``, ``'token': hard link to ...``), a pair whose unquoted value has no
letter or digit (``DB_PASSWORD = { from_env = "VAR" }``), and
``Bearer``/``Basic`` followed by a lowercase word of under 20 letters
(``Basic authentication``). A
credential of that shape in foreign text is missed by the patterns; when
Chassis resolved it, the value registry below still removes it.

Secret values Chassis resolved
------------------------------
Patterns only catch what looks like a secret. A value Chassis itself read
(``from_env``, ``from_file``, a secret store) is known exactly, so it is
removed by value wherever it shows up, whatever surrounds it: a component
that prints its database password in a log tail must not put it in a signed,
hash-chained record that can never be rewritten. ``register_secret`` adds a
value to the process-wide registry (``SECRET_VALUES``) for the lifetime of
the command (the CLI clears it when a command starts and ends); every
``scrub_text``, ``Redactor.value`` and ``Redactor.data`` then replaces,
before the pattern scan:

* the value itself, its JSON string escaping, and its percent-encodings
  (``quote``, ``quote_plus``; upper- and lowercase hex);
* its base64, standard and URL-safe, with and without padding, and the
  part of the encoding that depends only on the value when it starts at
  any of the 3 byte offsets inside a longer encoded string (``user:pass``
  in a Basic header, ``echo $SECRET | base64`` with its newline);
* each line of a multi-line value (a key file) on its own, PEM armour
  lines excepted (the PEM pattern covers those).

Short values cannot be told apart from ordinary text: a value of
``MIN_SECRET_CHARS`` (8) characters or more is replaced wherever it occurs,
with all the encodings above; one of ``MIN_WORD_CHARS`` (4) to 7 characters
only where it stands as a whole word (no letter or digit on either side),
in its plain, percent and full base64 forms; a shorter one is not replaced
at all, and ``SecretValues.too_short`` names it so the command can warn.
The marker of a value found by value is the marker of the value itself,
whichever form was found.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

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
_PLAIN_WORD = re.compile(r"[a-z]{1,19}")
"""After ``Bearer``/``Basic``: an English word, not a credential."""
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@\[\]]*:)([^\s/?#]*)(@)")
_NAME = re.compile(r"""(?<![\w.])(\\?["']|)([A-Za-z_][\w.-]*)\1\s*([:=])(\s*)""")
_PROSE = re.compile(r"[a-z]+[ \t]+[a-z]")
"""A bare value that reads as the start of a sentence: ``looks like …``."""
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


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """True when a key of that name may hold a secret (see the module docstring)."""
    words = [word.lower() for word in _WORD.findall(name)]
    if any(word in _SEGMENTS for word in words):
        return True
    if any(pair in _PAIRS for pair in itertools.pairwise(words)):
        return True
    compact = "".join(words)
    return any(fragment in compact for fragment in _SUBSTRINGS)


_MEMO_ENTRIES = 65_536
_MEMO_CHARS = 4_096
"""Longer texts (whole logs, documents) are rarely seen twice: not kept."""


class Redactor:
    """Redacts with one per-ledger key, so markers are comparable within a ledger."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("a redaction key is at least 16 bytes")
        self._key = key
        # Redaction keyed by value: a backlog of receipts redacts the same
        # host names, step names and log lines thousands of times. An entry
        # holds only for the registered values it was made under
        # (``SecretValues.generation``); the memo is emptied when they change.
        self._memo: dict[str, str] = {}
        self._memo_generation: object = None

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
        """``text`` with every registered secret value and every secret-looking
        part replaced by its marker."""
        memo = self._current_memo()
        done = memo.get(text)
        return done if done is not None else self._value(text, memo)

    def data(self, obj: Any) -> Any:
        """A deep copy of ``obj`` with secret-like keys' values and secret-looking text redacted."""
        return self._data(obj, self._current_memo())

    def _current_memo(self) -> dict[str, str]:
        generation = SECRET_VALUES.generation
        if generation is not self._memo_generation or len(self._memo) >= _MEMO_ENTRIES:
            self._memo = {}
            self._memo_generation = generation
        return self._memo

    def _value(self, text: str, memo: dict[str, str]) -> str:
        done = _scan(SECRET_VALUES.scrub(text, self.marker), self.marker)
        if len(text) <= _MEMO_CHARS:
            memo[text] = done
        return done

    def _data(self, obj: Any, memo: dict[str, str]) -> Any:
        # Exact types first (a receipt walks thousands of nodes); subclasses
        # of the built-in types take the isinstance branches below.
        kind = type(obj)
        if kind is str:
            done = memo.get(obj)
            return done if done is not None else self._value(obj, memo)
        if kind is list:
            return [self._data(item, memo) for item in obj]
        if kind is int or kind is bool or obj is None:
            return obj
        if isinstance(obj, str):
            return self._value(obj, memo)
        if isinstance(obj, dict):
            result: dict[Any, Any] = {}
            for key, item in obj.items():
                if isinstance(key, str):
                    new_key = memo.get(key)
                    if new_key is None:
                        new_key = self._value(key, memo)
                    if is_secret_key(key):
                        result[new_key] = self._whole(item)
                        continue
                    result[new_key] = self._data(item, memo)
                else:
                    result[key] = self._data(item, memo)
            return result
        if isinstance(obj, list):
            return [self._data(item, memo) for item in obj]
        if isinstance(obj, tuple):
            return tuple(self._data(item, memo) for item in obj)
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


_TRIGGERS = (
    "-----begin",
    "bearer",
    "basic",
    "://",
    "pass",
    "pwd",
    "secret",
    "token",
    "auth",
    "cookie",
    "credential",
    "session",
    "key",
    "github_pat_",
    "akia",
    "asia",
    "xox",
    "k_live_",
    "aiza",
    "eyj",
)
_TRIGGER = re.compile("|".join([*map(re.escape, _TRIGGERS), "gh[pousr]_"]))


def _may_hold_secret(text: str) -> bool:
    """Whether any pattern of :func:`_scan` could match: each needs, in any
    case, the PEM armour, a scheme, a URL, a secret-like name (every segment,
    pair and fragment of ``is_secret_key`` contains one of these letter
    runs) or a token prefix. Most text holds none, and a few substring
    tests rule out all five passes (a receipt redacts thousands of strings)."""
    return _TRIGGER.search(text.lower()) is not None


def _scan(text: str, marker: Callable[[str], str]) -> str:
    return scan_patterns(text, marker) if _may_hold_secret(text) else text


def scan_patterns(text: str, marker: Callable[[str], str]) -> str:
    """Every pattern pass over ``text`` (what :func:`_scan` runs when needed)."""
    text = _PEM.sub(lambda m: marker(m.group(0)), text)
    text = _SCHEME_CREDENTIALS.sub(_scheme_credentials(marker), text)
    text = _URL_PASSWORD.sub(_url_password(marker), text)
    text = _redact_pairs(text, marker)
    return _TOKEN_SHAPES.sub(lambda m: marker(m.group(0)), text)


def _scheme_credentials(marker: Callable[[str], str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        scheme, space, credentials = match.groups()
        if _PLAIN_WORD.fullmatch(credentials):
            return match.group(0)  # "Basic authentication", "bearer tokens"
        return f"{scheme}{space}{marker(credentials)}"

    return replace


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
        prose = bare is not None and name.group(3) == ":" and bool(name.group(4))
        if prose and _PROSE.match(text, value.start()):
            continue  # "DB_PASSWORD: looks like a secret" is a sentence
        if bare is not None and not any(ch.isalnum() for ch in bare):
            continue  # "DB_PASSWORD = { from_env = … }": syntax, not a value
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
    """``text`` (a log line, an exception message) with registered secret
    values and secret-looking parts redacted.

    Without a redactor the plain ``[redacted]`` marker is used.
    """
    if redactor is not None:
        return redactor.value(text)
    return _scan(SECRET_VALUES.scrub(text, _plain), _plain)


def scrub_values(text: str, redactor: Redactor | None = None) -> str:
    """``text`` with the registered secret values (in every encoding) redacted,
    and nothing else: for output that must stay byte for byte as rendered
    (tables, envelopes) apart from the secrets Chassis itself resolved."""
    return SECRET_VALUES.scrub(text, redactor.marker if redactor is not None else _plain)


def scrub_values_data(obj: Any) -> Any:
    """A copy of ``obj`` with the registered secret values scrubbed from every
    string in it (dict keys included), containers keeping their types: for
    arguments of events, whose structure must not change."""
    if not SECRET_VALUES:
        return obj
    if isinstance(obj, str):
        return SECRET_VALUES.scrub(obj, _plain)
    if isinstance(obj, dict):
        return {scrub_values_data(k): scrub_values_data(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_values_data(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(scrub_values_data(item) for item in obj)
    return obj


def _plain(_secret: str) -> str:
    return PLAIN_MARKER


# Secret values, by value.

MIN_SECRET_CHARS = 8
"""A registered value this long is replaced wherever it occurs, in every encoding."""
MIN_WORD_CHARS = 4
"""A shorter registered value is not replaced at all (``SecretValues.too_short``)."""
_ALNUM = "A-Za-z0-9"


class SecretValues:
    """The secret values resolved during one command, and every form of them
    that must never be recorded or printed (see the module docstring).

    Thread-safe: hosts resolve and record in parallel. Scrubbing reads one
    compiled pattern, replaced whole when a value is registered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._anywhere: dict[str, str] = {}
        self._words: dict[str, str] = {}
        self._too_short: list[str] = []
        self._compiled: tuple[re.Pattern[str], dict[str, str]] | None = None

    def __repr__(self) -> str:
        return f"SecretValues(<{len(self)} value(s)>)"

    def __len__(self) -> int:
        return len(set(self._anywhere.values()) | set(self._words.values()))

    def __bool__(self) -> bool:
        return self._compiled is not None

    @property
    def generation(self) -> object:
        """An object that is replaced whenever the registered values change
        (so a result computed under one generation holds while it lasts)."""
        return self._compiled

    def register(self, value: str, name: str = "a secret value") -> None:
        """Scrub ``value`` (named ``name`` in warnings) from now until ``clear``."""
        with self._lock:
            changed = False
            for secret in _secret_parts(value):
                if not secret.strip():
                    continue  # an empty value hides nothing
                if len(secret) < MIN_WORD_CHARS:
                    if secret == value.strip() and name not in self._too_short:
                        self._too_short.append(name)
                    continue
                anywhere = len(secret) >= MIN_SECRET_CHARS
                table = self._anywhere if anywhere else self._words
                for form in _forms(secret, cores=anywhere):
                    if form not in table:
                        table[form] = secret
                        changed = True
            if changed:
                self._compiled = _compile(self._anywhere, self._words)

    def clear(self) -> None:
        """Forget every value: a new command starts."""
        with self._lock:
            self._anywhere, self._words, self._too_short = {}, {}, []
            self._compiled = None

    def too_short(self) -> list[str]:
        """Names of registered values too short to scrub (under ``MIN_WORD_CHARS``)."""
        with self._lock:
            return list(self._too_short)

    def scrub(self, text: str, marker: Callable[[str], str]) -> str:
        """``text`` with every form of every registered value replaced by
        ``marker(value)``; markers already there are left alone."""
        compiled = self._compiled
        if compiled is None or not text:
            return text
        pattern, secret_of = compiled

        def replace(match: re.Match[str]) -> str:
            found = match.group(2) if match.group(2) is not None else match.group(3)
            if found is None:
                return match.group(0)  # a marker
            return marker(secret_of[found])

        return pattern.sub(replace, text)


SECRET_VALUES = SecretValues()
"""The process-wide registry: one command runs per process (the CLI clears it)."""


def register_secret(value: str, name: str = "a secret value") -> None:
    """Scrub ``value`` from everything recorded or printed until the command ends."""
    SECRET_VALUES.register(value, name)


def clear_secrets() -> None:
    SECRET_VALUES.clear()


def _secret_parts(value: str) -> Iterator[str]:
    """The value, trimmed, and each line of a multi-line value (not PEM armour)."""
    yield value
    if value.strip() != value:
        yield value.strip()
    if "\n" in value.strip():
        for line in value.splitlines():
            line = line.strip()
            if line and not line.startswith("-----"):
                yield line


def _forms(secret: str, *, cores: bool) -> set[str]:
    """Every text form of ``secret`` to scrub; with ``cores`` also the parts of
    its base64 at the 3 byte offsets inside a longer encoded string."""
    data = secret.encode("utf-8", "surrogatepass")
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    for encoded in (quote(secret, safe=""), quote(secret, safe="/"), quote_plus(secret)):
        forms |= {encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded)}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        full = encode(data).decode("ascii")
        forms |= {full, full.rstrip("=")}
        if cores:
            for offset in range(3):
                encoded = encode(b"\0" * offset + data).decode("ascii")
                # Characters mixing bits of what comes before or after are left out.
                start, end = -(-8 * offset // 6), 8 * (offset + len(data)) // 6
                if end - start >= MIN_SECRET_CHARS:
                    forms.add(encoded[start:end])
    forms.discard("")
    return forms


def _compile(
    anywhere: dict[str, str], words: dict[str, str]
) -> tuple[re.Pattern[str], dict[str, str]]:
    """One pattern: existing markers (kept), then long forms, longest first, then
    short forms as whole words."""

    def alternation(forms: dict[str, str]) -> str:
        return "|".join(re.escape(f) for f in sorted(forms, key=lambda f: (-len(f), f)))

    parts = [f"({MARKER.pattern})"]
    parts.append(f"({alternation(anywhere)})" if anywhere else "(?!)()")
    if words:
        parts.append(f"(?<![{_ALNUM}])({alternation(words)})(?![{_ALNUM}])")
    else:
        parts.append("(?!)()")
    return re.compile("|".join(parts)), {**words, **anywhere}
