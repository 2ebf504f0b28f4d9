"""chassis.toml is parsed once per content, and a rewrite is always seen."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from chassis import toml_files
from chassis.connect import ssh_timeout_s
from chassis.workspace import Workspace

STACK = """\
[app]
name = "shop"

[environments.prod]
hosts = [{{ name = "h1", connector = "ssh", address = "127.0.0.1", user = "u", root = "/srv" }}]
ssh_timeout_ms = {timeout}
"""


def test_the_same_bytes_are_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[str] = []
    real = tomllib.loads

    def counted(text: str) -> dict[str, object]:
        parses.append(text)
        return real(text)

    monkeypatch.setattr(tomllib, "loads", counted)
    path = tmp_path / "chassis.toml"
    path.write_text(STACK.format(timeout=30000) + "# parsed once\n")
    first = toml_files.load_toml(path)
    second = toml_files.load_toml(path)
    assert first == second and len(parses) == 1
    first["app"]["name"] = "changed by a caller"
    assert toml_files.load_toml(path)["app"] == {"name": "shop"}, "callers share no state"


def test_a_rewrite_of_the_same_size_within_one_timestamp_is_read(tmp_path: Path) -> None:
    """A file rewritten with as many bytes and its old timestamp (as a quick
    rewrite within the file system's clock tick leaves it): the new value is
    what a connector gets, where a cache keyed by size and mtime kept the old."""
    root = tmp_path / "shop"
    root.mkdir()
    ws = Workspace(root)
    ws.stack_file.write_text(STACK.format(timeout=30000))
    assert ssh_timeout_s(ws, "h1", "prod") == 30.0
    before = ws.stack_file.stat()
    ws.stack_file.write_text(STACK.format(timeout=45000))
    os.utime(ws.stack_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert ws.stack_file.stat().st_size == before.st_size
    assert ssh_timeout_s(ws, "h1", "prod") == 45.0
