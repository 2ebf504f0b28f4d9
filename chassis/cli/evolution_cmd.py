"""``chassis evolution …``: promote a candidate only through its gates, and prove it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from chassis.cli.app import App, pass_app, table
from chassis.errors import ChassisError

GATE_FAILED = 20
"""A required gate did not pass: the candidate was not promoted (the proof
was still written, with the failure)."""

REQUIRE_FLAGS = {
    "require_trial": "trial",
    "require_score": "score",
    "require_consent": "consent",
    "require_swap": "swap",
    "require_drill": "rollback-drill",
}


class GateFailed(ChassisError):
    exit_code = GATE_FAILED


@click.group(
    "evolution",
    epilog="""\b
Examples:
  chassis evolution proof shop --env prod --candidate v2 --require-trial \\
      --require-consent --require-health-gated-swap --require-rollback-proof
  chassis evolution fixture list
  chassis evolution fixture run source_level_repair_001""",
)
def evolution_group() -> None:
    """Gate a candidate release (trial, score, consent, swap, rollback drill) and prove it."""


def _require_options(command: Any) -> Any:
    options = [
        click.option("--require-trial", is_flag=True, help="The trial slot must be healthy."),
        click.option(
            "--require-score", is_flag=True, help="Every score command must pass (or be absent)."
        ),
        click.option(
            "--require-consent",
            "--require-citadel-consent",
            "require_consent",
            is_flag=True,
            help="A standing approver consent by another key.",
        ),
        click.option(
            "--require-health-gated-swap",
            "require_swap",
            is_flag=True,
            help="The promotion deploy must pass its health gate (it always restores on failure).",
        ),
        click.option(
            "--require-rollback-proof",
            "require_drill",
            is_flag=True,
            help="The rollback drill must pass.",
        ),
        click.option(
            "--drill",
            type=click.Choice(["trial", "production"]),
            default="trial",
            show_default=True,
            help="Where the rollback drill runs: a slot beside production, or production "
            "itself (rolled back, proven, then promoted again).",
        ),
        click.option(
            "--port-offset",
            type=click.IntRange(1, 60000),
            default=10000,
            show_default=True,
            help="Trial ports are the declared ports plus this.",
        ),
        click.option(
            "--out",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the proof here [default: .chassis/proofs/evolution-RUN.dsse.json].",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the run's outcome as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@evolution_group.command(
    "proof",
    epilog="""\b
Gates, in order: trial (the candidate in a slot beside production, its own
root and ports, health-gated, torn down after), score (each component's score
command against the trial and against production), rollback-drill (what
production would roll back to, staged and started in a slot: the way back
works), consent (a standing grant by an approver key other than yours), swap
(a normal deploy, health-gated, restored on failure). A gate after a failed
required one is SKIPPED. Every verdict is a signed event; the proof is a DSSE
envelope over an in-toto statement citing them ('chassis proof verify FILE').
With --fixture NAME the run is that fixture's scenario, in a scratch
workspace (see 'chassis evolution fixture list').
Exit status: 0 promoted; 20 a required gate failed (not promoted; proof
written); 9 nothing to promote; 10 nothing deployed or no such release;
7 locked; 3 a bundle is broken or gone.
Examples:
  chassis evolution proof shop --env prod --candidate v2 --require-trial --require-consent
  chassis evolution proof --app extravaganza --profile profile:ternary-split-3 --env prod \\
      --fixture fixture:source_level_repair_001 --require-trial --require-citadel-consent \\
      --require-health-gated-swap --require-rollback-proof""",
)
@click.argument("app_name", metavar="[APP]", required=False)
@click.option("--app", "app_option", default=None, help="Same as APP.")
@click.option(
    "--env", "environment", default=None, help="Default: [defaults] env, or the only one."
)
@click.option("--profile", default=None, help="Default: the environment's or [defaults] profile.")
@click.option("--candidate", metavar="LABEL", help="The release to promote.")
@click.option("--fixture", default=None, help="Run a named fixture scenario instead.")
@_require_options
@pass_app
def proof_command(
    app: App,
    app_name: str | None,
    app_option: str | None,
    environment: str | None,
    profile: str | None,
    candidate: str | None,
    fixture: str | None,
    drill: str,
    port_offset: int,
    out: Path | None,
    as_json: bool,
    require_trial: bool,
    require_score: bool,
    require_consent: bool,
    require_swap: bool,
    require_drill: bool,
) -> None:
    """Try CANDIDATE beside production, gate it, promote it only if every
    required gate passes, and write a signed proof either way."""
    flags = {
        "require_trial": require_trial,
        "require_score": require_score,
        "require_consent": require_consent,
        "require_swap": require_swap,
        "require_drill": require_drill,
    }
    required = frozenset(gate for flag, gate in REQUIRE_FLAGS.items() if flags[flag])
    app_name = app_name or app_option
    if fixture is not None:
        from chassis.evolution.fixtures import run_fixture

        report = run_fixture(
            fixture,
            app=app_name or "extravaganza",
            environment=environment or "prod",
            profile=profile or "ternary-split-3",
            required=required or None,
            out=out,
            progress=app.note,
        )
        _fixture_report(app, report, as_json)
        if not report.promoted:
            raise GateFailed(f"fixture {fixture}: not promoted: {report.summary}")
        return
    if candidate is None:
        raise click.UsageError("give --candidate LABEL (or --fixture NAME)")
    from chassis.evolution.proof import evolution_proof
    from chassis.evolution.run import EvolutionRequest, evolve

    app_name, environment = app.target(app_name, environment)
    stack = app.stack()
    profile = profile or stack.default_profile(environment)
    ledger = app.ledger(signing=True)
    request = EvolutionRequest(
        app=app_name,
        environment=environment,
        profile=profile,
        candidate=candidate,
        required=required,
        port_offset=port_offset,
        drill=drill,
    )
    result = evolve(ledger, app.workspace, stack, request, app.note)
    envelope = evolution_proof(ledger, app.workspace, app.signer(), result)
    path = out or app.workspace.state_dir / "proofs" / f"evolution-{result.run.slot}.dsse.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(envelope, indent=2, sort_keys=True) + "\n")
    data: dict[str, Any] = {
        "run": result.run.slot,
        "outcome": result.outcome,
        "promoted": result.promoted,
        "revision": result.revision,
        "candidate": result.candidate,
        "baseline": result.baseline,
        "gates": [
            {k: v for k, v in g.to_dict().items() if k in ("gate", "required", "status", "reason")}
            for g in result.gates.values()
        ],
        "proof": str(path),
    }

    def human() -> None:
        rows = [
            [g["gate"], g["status"], "required" if g["required"] else "", g["reason"]]
            for g in data["gates"]
        ]
        table(rows, ["GATE", "STATUS", "", "REASON"])
        click.echo(f"{result.outcome}: {result.candidate['label']} (run {result.run.slot})")
        click.echo(f"proof: {path}")

    app.emit(data, as_json=as_json, human=human)
    if not result.promoted:
        failed = [g["gate"] for g in data["gates"] if g["required"] and g["status"] != "PASS"]
        raise GateFailed(
            f"{result.candidate['label']} not promoted: {', '.join(failed) or 'swap'} did not "
            f"pass (proof: {path})"
        )


@evolution_group.group("fixture", epilog="Example: chassis evolution fixture list")
def fixture_group() -> None:
    """Named evolution scenarios run against the demo stack on local hosts."""


@fixture_group.command("list", epilog="Example: chassis evolution fixture list --json")
@click.option("--json", "as_json", is_flag=True, help="Print fixtures as JSON.")
@pass_app
def fixture_list_command(app: App, as_json: bool) -> None:
    """Every fixture: what it plants and what the gates must decide."""
    from chassis.evolution.fixtures import FIXTURES

    data = [f.to_dict() for f in FIXTURES.values()]
    rows = [[f["name"], f["expect"], f["description"]] for f in data]
    app.emit(data, as_json=as_json, human=lambda: table(rows, ["FIXTURE", "EXPECT", "SCENARIO"]))


@fixture_group.command(
    "run",
    epilog="""\b
Builds a scratch workspace (the demo stack on three local hosts, fresh keys:
a requester and an approver), deploys the baseline, plants the scenario, runs
'evolution proof' with every gate required, verifies the proof, and checks
that the outcome is the one the fixture expects; then stops everything.
Exit status: 0 the gates decided as expected; 20 they did not.
Examples:
  chassis evolution fixture run source_level_repair_001
  chassis evolution fixture run consent_same_key --keep ./scratch --json""",
)
@click.argument("name")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Build the scratch workspace here and keep it (default: a temporary directory).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def fixture_run_command(app: App, name: str, keep: Path | None, as_json: bool) -> None:
    """Run fixture NAME and check that its gates decide as expected."""
    from chassis.evolution.fixtures import run_fixture

    report = run_fixture(name, directory=keep, progress=app.note)
    _fixture_report(app, report, as_json)
    if not report.as_expected:
        raise GateFailed(f"fixture {name}: expected {report.expected}, got {report.summary}")


def _fixture_report(app: App, report: Any, as_json: bool) -> None:
    def human() -> None:
        rows = [[g["gate"], g["status"], g["reason"]] for g in report.gates]
        if rows:
            table(rows, ["GATE", "STATUS", "REASON"])
        verdict = "as expected" if report.as_expected else "NOT as expected"
        click.echo(f"fixture {report.name}: {report.summary} ({verdict}: {report.expected})")
        if report.proof:
            click.echo(f"proof: {report.proof} ({report.verified})")

    app.emit(report.to_dict(), as_json=as_json, human=human)
