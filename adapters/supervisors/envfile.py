"""Environment files that POSIX ``sh`` and systemd read the same way.

Every line is ``NAME="value"`` with ``\\``, ``"``, ``$`` and `````` escaped by
a backslash. That is the one quoting both readers agree on:

- ``sh``: ``set -a; . FILE`` assigns and exports each name; inside double
  quotes a backslash escapes exactly those four characters (and newline), so
  no expansion or command substitution happens;
- systemd's ``EnvironmentFile=`` parser unescapes exactly the same set
  (``SHELL_NEED_ESCAPE``) inside double quotes and keeps embedded newlines.

The file holds secrets: write it with mode 0600 (``Connector.put_bytes(...,
mode=0o600)`` sets the mode before any byte lands). Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from adapters.connectors.base import ENV_NAME

__all__ = ["ENV_FILE_MODE", "parse_env_file", "quote_env_value", "render_env_file"]

ENV_FILE_MODE = 0o600
_ESCAPED = re.compile(r'([\\"$`])')


def quote_env_value(value: str) -> str:
    """``value`` in double quotes, escaped for both ``sh`` and systemd."""
    if "\0" in value:
        raise ValueError("environment values cannot contain NUL bytes")
    return '"' + _ESCAPED.sub(r"\\\1", value) + '"'


def render_env_file(env: Mapping[str, str]) -> bytes:
    """The file's bytes: one ``NAME="value"`` line per variable, names sorted.

    Raises ValueError naming the bad variable *name* (never a value).
    """
    bad = sorted(name for name in env if not ENV_NAME.match(name))
    if bad:
        raise ValueError(f"invalid environment variable name(s): {', '.join(bad)}")
    lines = []
    for name in sorted(env):
        try:
            quoted = quote_env_value(env[name])
        except ValueError:
            raise ValueError(f"environment variable {name}: value contains a NUL byte") from None
        lines.append(f"{name}={quoted}\n")
    return "".join(lines).encode("utf-8")


def parse_env_file(data: bytes) -> dict[str, str]:
    """Read back what :func:`render_env_file` wrote (the inverse, for tests and tools).

    Accepts only that format: ``NAME="escaped"`` entries, possibly spanning
    lines, blank lines and ``#`` comments between them.
    """
    text = data.decode("utf-8")
    env: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t\n":
            i += 1
            continue
        if text[i] == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        eq = text.find('="', i)
        name = text[i:eq] if eq >= 0 else ""
        if not ENV_NAME.match(name):
            raise ValueError(f"malformed environment file entry at offset {i}")
        i = eq + 2
        value: list[str] = []
        while True:
            if i >= n:
                raise ValueError(f"environment variable {name}: unterminated quote")
            c = text[i]
            if c == "\\" and i + 1 < n and text[i + 1] in '\\"$`':
                value.append(text[i + 1])
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                value.append(c)
                i += 1
        env[name] = "".join(value)
    return env
