"""The one environment-file format, its one writer and its one reader.

Every variable a component gets (release config, component ``env``, resolved
secrets, ``CHASSIS_*``) reaches the host through :func:`render_env_file`, for
both supervisors. Each line is ``NAME="value"``:

- names follow :data:`~adapters.connectors.base.ENV_NAME`, checked here
  again whatever was checked at input (a name is never written unchecked);
- inside the double quotes, ``\\``, ``"``, ``$`` and `````` are escaped by a
  backslash: exactly the set systemd's ``EnvironmentFile=`` parser unescapes
  (``SHELL_NEED_ESCAPE`` in ``src/basic/env-file.c``), which keeps every
  other byte, newlines included, as it is;
- values systemd would drop or cut (a NUL byte, text that is not valid
  UTF-8 to systemd: lone surrogates and Unicode non-characters) are refused
  with the variable's name, never its value.

Nothing reads this file with a shell. systemd parses it itself; the
``direct`` supervisor's wrapper hands it to :data:`ENV_LOADER`, a small
Python program that parses it with the same code as :func:`parse_env_file`
(:data:`_READER` is run here and shipped there, so the two cannot drift) and
``execve``-s the command with the result. Data never becomes code
(DESIGN.md §1 principle 10).

The file holds secrets: write it with mode 0600 (``Connector.put_bytes(...,
mode=0o600)`` sets the mode before any byte lands). Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, cast

from adapters.connectors.base import ENV_NAME, ENV_NAME_RULE

__all__ = [
    "ENV_FILE_MODE",
    "ENV_LOADER",
    "parse_env_file",
    "quote_env_value",
    "render_env_file",
    "value_problem",
]

ENV_FILE_MODE = 0o600
_ESCAPED = re.compile(r'([\\"$`])')

# The reader, as source text: stdlib only, Python 3.6+, no f-strings (it runs
# under whatever python3 a host has). Its valid_name is ENV_NAME's rule
# (tests/adapters/test_envfile.py checks the two agree).
# Strict on purpose: it accepts what render_env_file writes (plus blank lines
# and ``#`` comments) and refuses anything else, so a hand-edited file cannot
# mean one thing to systemd and another to the direct wrapper.
_READER = r'''
NAME_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
NAME_CHARS = frozenset(NAME_FIRST + "0123456789")
ESCAPABLE = '\\"$`'


def valid_name(name):
    # ENV_NAME's rule, checked without importing re: that import is a third
    # of this program's cost at every start on a host.
    return 0 < len(name) <= 128 and name[0] in NAME_FIRST and NAME_CHARS.issuperset(name)


def parse(text):
    """NAME="escaped" entries, one per line (values may span lines)."""
    env = {}
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in " \t\r":
            i += 1
            continue
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        eq = text.find('="', i)
        name = text[i:eq] if eq >= 0 else ""
        if not valid_name(name):
            raise ValueError('line %d: expected NAME="value"' % line)
        i = eq + 2
        value = []
        while True:
            if i >= n:
                raise ValueError("variable %s: unterminated quote" % name)
            c = text[i]
            if c == "\\":
                if i + 1 >= n or text[i + 1] not in ESCAPABLE:
                    raise ValueError("variable %s: a backslash must escape \\ \" $ or `" % name)
                value.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                i += 1
                break
            if c == "\n":
                line += 1
            value.append(c)
            i += 1
        while i < n and text[i] in " \t\r":
            i += 1
        if i < n and text[i] != "\n":
            raise ValueError("variable %s: text after the closing quote" % name)
        env[name] = "".join(value)
    return env
'''

_LOADER_MAIN = r"""
import os
import sys


def environment(pid):
    # The wrapper's environment, not ours: python3 may add LC_CTYPE (PEP 538)
    # and a pyenv shim may change PATH on the way here.
    try:
        with open("/proc/%s/environ" % pid, "rb") as f:
            block = f.read()
    except OSError:
        return dict(os.environb)
    env = {}
    for entry in block.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if key and sep:
            env[key] = value
    return env


def main():
    # argv: wrapper pid, operator env file ('' if none), command, fd of the
    # supervisor's own (already deleted) env file ('' if none).
    pid, user_file, command, fd = sys.argv[1:5]
    env = environment(pid)
    sources = []
    if user_file:  # first, so the supervisor's own values win
        sources.append((user_file, lambda: open(user_file, "rb")))
    if fd:
        sources.append(("the supervisor's env file", lambda: os.fdopen(int(fd), "rb")))
    for label, opener in sources:
        try:
            with opener() as handle:
                found = parse(handle.read().decode("utf-8"))
        except (OSError, ValueError) as e:
            sys.stderr.write("chassis: cannot load %s: %s\n" % (label, e))
            sys.exit(126)
        for key, value in found.items():
            env[key.encode()] = value.encode("utf-8")
    os.execve("/bin/sh", ["/bin/sh", "-c", command], env)


main()
"""

ENV_LOADER = _READER + _LOADER_MAIN
"""``python3 -c ENV_LOADER PID ENV_FILE COMMAND FD``: load env files, exec the command.

The direct supervisor's wrapper runs it in place of ``. FILE``: the values
become the command's environment through ``execve``, never through a shell.
"""

# The same text that runs on hosts, compiled here: one reader, two places.
_reader_namespace: dict[str, Any] = {}
exec(compile(_READER, "<chassis env reader>", "exec"), _reader_namespace)  # noqa: S102
_parse = cast(Callable[[str], dict[str, str]], _reader_namespace["parse"])


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot travel in an env file unchanged (no value in the text), or None.

    systemd cuts a value at NUL and ignores an assignment whose bytes are not
    valid UTF-8 by its rules, which reject surrogates and the non-characters
    U+FDD0..U+FDEF and U+xFFFE/U+xFFFF (``unichar_is_valid``).
    """
    if "\0" in value:
        return "value contains a NUL byte"
    for ch in value:
        point = ord(ch)
        if 0xD800 <= point <= 0xDFFF:
            return f"value contains a lone surrogate (U+{point:04X}), which is not UTF-8"
        if 0xFDD0 <= point <= 0xFDEF or point & 0xFFFE == 0xFFFE:
            return f"value contains U+{point:04X}, a Unicode non-character that systemd rejects"
    return None


def quote_env_value(value: str) -> str:
    """``value`` in double quotes, escaped for systemd and :data:`ENV_LOADER`."""
    problem = value_problem(value)
    if problem is not None:
        raise ValueError(f"environment {problem}")
    return '"' + _ESCAPED.sub(r"\\\1", value) + '"'


def render_env_file(env: Mapping[str, str]) -> bytes:
    """The file's bytes: one ``NAME="value"`` line per variable, names sorted.

    Raises ValueError naming the bad variable *names* (never a value): the one
    place every variable passes on its way to a host, so it checks again what
    input validation already checked.
    """
    bad = sorted(name for name in env if not ENV_NAME.match(name))
    if bad:
        raise ValueError(
            f"invalid environment variable name(s) {', '.join(map(repr, bad))}: "
            f"expected {ENV_NAME_RULE}"
        )
    lines = []
    for name in sorted(env):
        problem = value_problem(env[name])
        if problem is not None:
            raise ValueError(f"environment variable {name}: {problem}")
        lines.append(f"{name}={quote_env_value(env[name])}\n")
    return "".join(lines).encode("utf-8")


def parse_env_file(data: bytes) -> dict[str, str]:
    """Read what :func:`render_env_file` wrote, with the reader hosts run.

    Accepts only that format: ``NAME="escaped"`` entries (values may span
    lines), blank lines and ``#`` comments between them; ValueError otherwise.
    """
    return _parse(data.decode("utf-8"))
