"""guides/deployment.md shows exactly the example `chassis init --example` writes."""

from __future__ import annotations

import re
from pathlib import Path

from chassis.stack.example import example_stack

GUIDE = (Path(__file__).resolve().parents[1] / "guides" / "deployment.md").read_text()


def test_guide_example_is_the_generated_example() -> None:
    example = GUIDE[GUIDE.index("### The example") :]
    block = re.findall(r"```toml\n(.*?)```", example, re.DOTALL)[0]
    assert block == example_stack("shop")


def test_builtin_runtimes_are_documented() -> None:
    from chassis.admission import BUILTIN_RUNTIMES

    for name in BUILTIN_RUNTIMES:
        assert f"| `{name}` |" in GUIDE
