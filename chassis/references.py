"""Typed references as the original project wrote them: ``profile:NAME``,
``fixture:NAME``, ``host:NAME``, ``runtime:NAME`` (and ``app:NAME``) are taken
wherever a name is, so its commands run as written::

    chassis evolution proof --app extravaganza --profile profile:ternary-split-3 …

A prefix is removed from the value of an option that takes that kind of name
(``--profile profile:x``, ``--target host:x``) and from a bare argument that
is exactly ``KIND:NAME``; ``runtime:APP:NAME`` (the original qualified a
runtime by its app) is ``NAME``; never from free text (``--reason``, ``--message``,
``--config``). ``model:`` references are resolved by ``chassis model``.
"""

from __future__ import annotations

import re

from adapters.connectors.base import NAME

PREFIXES = ("profile", "fixture", "host", "runtime", "app")
OPTION_KINDS = {
    "--profile": "profile",
    "--fixture": "fixture",
    "--host": "host",
    "--target": "host",
    "--runtime": "runtime",
    "--app": "app",
}
FREE_TEXT = frozenset({"--reason", "--message", "--config", "--description", "-m"})
_REFERENCE = re.compile(rf"({'|'.join(PREFIXES)}):(.+)\Z")


def _bare(value: str, kind: str | None = None) -> str:
    found = _REFERENCE.match(value)
    if found is None or (kind is not None and found.group(1) != kind):
        return value
    name = found.group(2)
    if found.group(1) == "runtime" and name.count(":") == 1:
        # The original qualified runtimes by their app: runtime:APP:NAME.
        app, _, runtime = name.partition(":")
        name = runtime if NAME.match(app) else name
    return name if NAME.match(name) else value


def strip_references(args: list[str]) -> list[str]:
    """``args`` with ``KIND:`` removed where a name of that kind is taken."""
    out: list[str] = []
    previous = ""
    for arg in args:
        if arg == "--":
            return [*out, *args[len(out) :]]
        option, eq, value = arg.partition("=")
        if previous in OPTION_KINDS:
            arg = _bare(arg, OPTION_KINDS[previous])
        elif eq and option in OPTION_KINDS:
            arg = f"{option}={_bare(value, OPTION_KINDS[option])}"
        elif previous not in FREE_TEXT and not arg.startswith("-"):
            arg = _bare(arg)
        out.append(arg)
        previous = arg if arg.startswith("-") else ""
    return out
