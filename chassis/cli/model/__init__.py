"""``chassis model …``: model assets, their materialization on hosts, the
host cache, and model swaps (``guides/model_assets.md``)."""

from __future__ import annotations

import click

from chassis.cli.lazy import Lazy, LazyGroup

COMMANDS = {
    "add": Lazy(
        "chassis.cli.model.assets:add_command",
        "Record model NAME: a manifest (path, size, sha256 of every file) of a directory, a "
        "file or a Hugging Face cache entry.",
    ),
    "list": Lazy("chassis.cli.model.assets:list_command", "Every recorded model."),
    "show": Lazy(
        "chassis.cli.model.assets:show_command",
        "A model's manifests and where each is materialized.",
    ),
    "materialize": Lazy(
        "chassis.cli.model.materialize:materialize_command",
        "Put a model on a host: admission, a plan, verified streaming transfer with resume, "
        "atomic placement.",
    ),
    "cache": Lazy(
        "chassis.cli.model.cache:cache_group",
        "The model cache on a host: list, pin, unpin, evict.",
    ),
    "swap": Lazy(
        "chassis.cli.model.swap:swap_command",
        "Point a component at another model through the health gate; restored on failure.",
    ),
}


@click.group(
    "model",
    cls=LazyGroup,
    lazy=COMMANDS,
    epilog="Example: chassis model materialize --model model:hf:org/tiny --target host:gpu-1",
)
def model_group() -> None:
    """Model assets: record, materialize on hosts with verified bytes, cache, swap."""
