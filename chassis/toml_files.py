"""TOML files read once per content: ``chassis.toml`` is read by many parts
of one command (the workspace's ledger URL, the release store, the stack,
each host's SSH timeouts), and a long-lived process (a test worker, an
embedding) reads it again for every command.

A file is read each time (a few microseconds) and parsed only when its bytes
were not parsed before: keyed by content, never by a timestamp that a quick
rewrite of the same size can leave unchanged. Callers get a copy of their
own, so none can change what the next one reads.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

_KEEP = 16
_parsed: dict[bytes, dict[str, Any]] = {}


def load_toml(path: Path) -> dict[str, Any]:
    """``path`` parsed; ``OSError`` and ``tomllib.TOMLDecodeError`` as
    ``tomllib.load`` raises them."""
    data = path.read_bytes()
    parsed = _parsed.get(data)
    if parsed is None:
        parsed = tomllib.loads(data.decode("utf-8"))
        if len(_parsed) >= _KEEP:
            _parsed.pop(next(iter(_parsed)))
        _parsed[data] = parsed
    return copy.deepcopy(parsed)
