"""The import direction of DESIGN.md §2 holds; click stays in the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {
    "ledger": set(),
    "adapters": set(),
    "projections": {"ledger"},
    "proofs": {"ledger"},
    "chassis": {"ledger", "projections", "proofs", "adapters"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_import_direction() -> None:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in (REPO / package).rglob("*.py"):
            for line, name in imports(path):
                root = name.split(".")[0]
                if root in ALLOWED and root != package and root not in allowed:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_click_only_in_the_cli() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line}"
        for package in ALLOWED
        for path in (REPO / package).rglob("*.py")
        if "cli" not in path.relative_to(REPO).parts
        for line, name in imports(path)
        if name.split(".")[0] == "click"
    ]
    assert not bad, bad
