"""``chassis stack validate``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app

INVALID = 3
"""The exit status of a stack file with problems (a workspace or configuration error)."""


@click.command(
    "validate",
    epilog="""\b
Exit status: 0 when valid, 3 when not (every problem listed).
Examples:
  chassis stack validate && echo ok
  chassis stack validate --json | jq -r '.problems[]?'""",
)
@click.option("--json", "as_json", is_flag=True, help="Print a summary (or the problems) as JSON.")
@pass_app
@click.pass_context
def validate_command(ctx: click.Context, app: App, as_json: bool) -> None:
    """Check chassis.toml: types, unknown keys, references between sections.

    Exit 0 when valid; exit 3 listing every problem, one line each, naming
    the file, the key path, what was expected (the valid values or keys,
    where there is a list) and what was found. With --json the problems
    are {"file", "valid": false, "problems": [...]} on stdout.
    """
    from chassis.stack.spec import StackError

    try:
        stack = app.stack()
    except StackError as e:
        _report(app, e, as_json)
        ctx.exit(INVALID)
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


def _report(app: App, error: Exception, as_json: bool) -> None:
    """Every problem: one ``chassis: error:`` line each on stderr, or JSON on stdout."""
    from proofs.redaction import scrub_text

    problems: list[str] = getattr(error, "problems", None) or [str(error)]
    if as_json:
        data = {"file": str(app.workspace.stack_file), "valid": False, "problems": problems}
        app.emit(data, as_json=True, human=lambda: None)
        return
    for line in problems:
        click.echo(f"chassis: error: {scrub_text(line)}", err=True)
