"""``chassis stack validate``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app


@click.command("validate", epilog="Example: chassis stack validate && echo ok")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
@pass_app
def validate_command(app: App, as_json: bool) -> None:
    """Check chassis.toml: types, unknown keys, references between sections.

    Exit 0 when valid; exit 3 with one line naming the file, the key path,
    what was expected and what was found.
    """
    stack = app.stack()
    data = {
        "file": str(stack.path),
        "app": stack.app.name,
        "components": sorted(stack.components),
        "profiles": sorted(stack.profiles),
        "environments": {
            name: [h.name for h in env.hosts] for name, env in stack.environments.items()
        },
        "releases": sorted(stack.releases),
        "runtimes": sorted(stack.runtimes),
    }

    def human() -> None:
        click.echo(f"{stack.path}: valid")
        click.echo(
            f"  app {stack.app.name}: {len(stack.components)} components, "
            f"{len(stack.profiles)} profiles, {len(stack.environments)} environments, "
            f"{sum(len(e.hosts) for e in stack.environments.values())} hosts"
        )

    app.emit(data, as_json=as_json, human=human)
