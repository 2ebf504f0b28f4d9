"""Command groups whose subcommands are imported when used, not when the
group is: ``chassis --version`` and ``chassis --help`` import no command
module, and ``chassis status`` imports the status command's module only
(``tests/cli/test_fast_start.py``).

A group lists each lazy subcommand as ``name: Lazy("module:attribute",
short help)``: the short help is what ``--help`` lists without importing the
command, and the test keeps it equal to the command's own.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import click


class Lazy(NamedTuple):
    target: str
    """``package.module:attribute``, the command object."""
    help: str
    """The command's short help as ``--help`` lists it (its first sentence)."""


class LazyGroup(click.Group):
    """A :class:`click.Group` that also knows subcommands by name only and
    imports each the first time it is asked for (aliases: two names, one target)."""

    def __init__(self, *args: Any, lazy: Mapping[str, Lazy] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, Lazy] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.load(cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def load(self, name: str) -> click.Command:
        """Import lazy subcommand ``name`` (without registering it)."""
        module, _, attribute = self.lazy[name].target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[name].target} is not a click command")
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            # click >= 8.4 suggests close names from the commands it holds:
            # suggest from every name, imported or not.
            no_such = getattr(click.exceptions, "NoSuchCommand", None)
            if no_such is None or not isinstance(e, no_such):
                raise
            raise no_such(e.command_name, possibilities=self.list_commands(ctx), ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As :meth:`click.Group.format_commands`, with the stored short help
        of the subcommands not imported yet (importing none)."""
        rows: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name, help=self.lazy[name].help)
            if not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, c.get_short_help_str(limit)) for name, c in rows])
