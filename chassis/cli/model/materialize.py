"""``chassis model materialize``: a model onto a host, bytes verified there."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from chassis.cli.app import App, pass_app

if TYPE_CHECKING:
    from chassis.hosts import HostLike
    from chassis.models.materialize import MaterializePlan, MaterializeResult
    from ledger.application import Ledger

ADMISSION_REFUSED = 13
SHOWN_FILES = 20
"""Files listed one per line by a human-readable plan; the rest are counted."""


@click.command(
    "materialize",
    epilog="""\b
On the host (ROOT is the host's root):
  ROOT/models/sha256/<manifest digest>/   the complete model, immutable
  ROOT/models/.partial/<manifest digest>/ a transfer in progress (resumed)
  ROOT/models/by-name/<model name>        a symlink to ../sha256/<digest>

\b
Admission is judged from the host's recorded facts ('chassis host inventory'):
with --runtime, its requirements, and the model against the largest GPU's
memory; always, the bytes to send against the disk holding ROOT (as recorded
and as the host says now). Each file is streamed to a receiver run by the
host's python3, which computes its sha256 as it writes; a file that does not
match is deleted there and sent once more from zero. An interrupted run keeps
what arrived: run the same command again to resume. Files already on the host
are skipped by name and size, or by sha256 re-computed there with
--verify-sha256.

\b
Exit status: 0 materialized (or planned, with --dry-run); 3 bad reference,
unknown runtime or refused manifest; 5 key error; 6 not authorised; 8 bytes
still wrong on the host after a re-send, or the source changed; 10 no such
model, host or source; 11 host unreachable, or the connection broke (run it
again to resume); 13 admission refused, reason codes: no-inventory, no-gpu,
too-few-gpus, insufficient-vram, compute-capability-too-low,
cuda-driver-out-of-range, cuda-driver-unknown, insufficient-cores,
insufficient-memory, insufficient-disk.

\b
Examples:
  chassis model materialize --model tiny --target gpu-1
  chassis model materialize --runtime runtime:cuda-small --model model:hf:qwen3-small-fixture --target host:gpu-fixture --verify-sha256 --dry-run
  chassis model materialize --model model:hf:org/tiny@main --target gpu-1 --json""",  # noqa: E501
)
@click.option(
    "--model",
    "model_ref",
    required=True,
    metavar="REF",
    help="NAME, model:NAME or model:hf:ORG/NAME, each with an optional @REV (a model:hf: "
    "one not recorded yet is recorded from the local Hugging Face cache).",
)
@click.option(
    "--target", "target", required=True, metavar="HOST", help="Registered or declared host."
)
@click.option(
    "--runtime",
    "runtime_name",
    default=None,
    metavar="NAME",
    help="Admit the host for this runtime too (built-in: cuda-small, cuda-large, cpu-only; or "
    "[runtimes.NAME] in chassis.toml).",
)
@click.option(
    "--verify-sha256",
    "verify",
    is_flag=True,
    help="Re-hash the files already on the host (default: their name and size are trusted).",
)
@click.option(
    "--hf-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="The Hugging Face hub cache the model is read from (default: HF_HUB_CACHE, else "
    "HF_HOME/hub, else ~/.cache/huggingface/hub).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the admission verdict and the plan; send and record nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan and the result as JSON.")
@pass_app
@click.pass_context
def materialize_command(
    ctx: click.Context,
    app: App,
    model_ref: str,
    target: str,
    runtime_name: str | None,
    verify: bool,
    hf_cache: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Put a model on a host: admission, a plan, verified streaming transfer with
    resume, atomic placement.

    Records MaterializeStarted (the plan), FilesPlaced (per-file outcomes:
    sent, resumed, resent, skipped) and Materialized in the ledger; progress
    goes to stderr, one line per file sent.
    """
    from chassis.models.materialize import (
        AdmissionRefused,
        host_connector,
        materialize,
        plan_materialize,
        resolve_model,
    )

    ledger = app.ledger(signing=not dry_run)
    model, digest = resolve_model(ledger, model_ref, record=not dry_run, hf_cache=hf_cache)
    host = _host(app, ledger, target, dry_run)
    # One connection for the inventory and the transfer, opened on first use:
    # past the admission checks that need none.
    connector = host_connector(host, app.workspace)
    with contextlib.closing(connector):
        try:
            plan = plan_materialize(
                ledger,
                app.workspace,
                model,
                host,
                runtime=runtime_name,
                verify=verify,
                digest=digest,
                connector=connector,
            )
        except AdmissionRefused as refused:
            data = {
                "model": refused.model,
                "host": refused.host,
                "dry_run": dry_run,
                "admitted": False,
                "admission": refused.admission,
            }
            admission = refused.admission
            app.emit(data, as_json=as_json, human=lambda: _show_refusal(admission, target))
            ctx.exit(ADMISSION_REFUSED)
        if dry_run:
            app.emit(
                {"dry_run": True, "plan": plan.to_dict(), "result": None},
                as_json=as_json,
                human=lambda: _show_plan(plan, dry_run=True),
            )
            return
        if not as_json:
            _show_plan(plan, dry_run=False)
        result = materialize(
            ledger,
            app.workspace,
            model,
            host,
            plan,
            app.note,
            connector=connector,
            hf_cache=hf_cache,
        )
        app.emit(
            {"dry_run": False, "plan": plan.to_dict(), "result": result.to_dict()},
            as_json=as_json,
            human=lambda: _show_result(result),
        )


def _host(app: App, ledger: Ledger, name: str, dry_run: bool) -> HostLike:
    """The target: a declared host is registered first (as every command
    does), except in a dry run, which reads the stack file's settings."""
    from chassis.hosts import (
        HostView,
        UnknownHost,
        get_host,
        settings_from_spec,
        sync_declared,
    )
    from ledger.hosts import Host

    stack = app.stack() if app.workspace.stack_file.exists() else None
    if not dry_run:
        if stack is not None:
            sync_declared(ledger, stack, {name})
        host = get_host(ledger, name)
        if host.removed:
            raise UnknownHost(f"host {name!r} was removed ({host.removed_reason})")
        return host
    known = ledger.find(Host, Host.id_for(name))
    recorded = known if known is not None and not known.removed else None
    for environment, spec in stack.hosts() if stack is not None else []:
        if spec.name == name:
            settings = settings_from_spec(environment, spec)
            if recorded is not None and recorded.settings == settings:
                return recorded
            return HostView(name, settings, recorded.facts if recorded is not None else None)
    if recorded is None:
        raise UnknownHost(f"no host named {name!r} (see 'chassis host list')")
    return recorded


def _size(n: int | None) -> str:
    from chassis.models.materialize import human_size

    return "unknown" if n is None else human_size(n)


def _show_refusal(admission: dict[str, Any], target: str) -> None:
    runtime = admission.get("runtime")
    against = f" for runtime {runtime}" if runtime else ""
    click.echo(f"{target}: admission refused{against}")
    for reason in admission["reasons"]:
        click.echo(f"  {reason['code']}: {reason['detail']}")


def _show_plan(plan: MaterializePlan, *, dry_run: bool) -> None:
    admission = plan.admission
    runtime = admission.get("runtime")
    facts = [f"model {_size(plan.total_bytes)}"]
    if admission.get("largest_gpu_bytes") is not None:
        facts.append(f"largest GPU {admission['largest_gpu_bytes'] / 2**30:.1f} GiB")
    facts.append(f"{_size(admission.get('host_free_bytes'))} free on the host")
    verdict = f"admitted for runtime {runtime}" if runtime else "admitted (disk space; no runtime)"
    click.echo(f"model {plan.model} ({plan.digest[:16]}…) → host {plan.host}")
    click.echo(f"  admission: {verdict}; {', '.join(facts)}")
    send, resume, skip = plan.of("send"), plan.of("resume"), plan.of("skip")
    click.echo(
        f"  plan: {len(plan.files)} file(s), {_size(plan.total_bytes)}: "
        f"send {len(send)}, resume {len(resume)}, skip {len(skip)}; "
        f"{_size(plan.bytes_to_send)} to send"
        + (" (sha256 re-computed on the host)" if plan.verify else "")
    )
    moving = [f for f in plan.files if f.action != "skip"]
    for f in moving[:SHOWN_FILES]:
        click.echo(f"    {f.action:<6} {f.path}  {_size(f.to_send)}  ({f.reason})")
    if len(moving) > SHOWN_FILES:
        click.echo(f"    … and {len(moving) - SHOWN_FILES} more")
    click.echo(f"  into {plan.to_dict()['path']}")
    if dry_run:
        click.echo("dry run: nothing sent, nothing recorded")


def _show_result(result: MaterializeResult) -> None:
    rate = result.bytes_sent / result.seconds / 1e6 if result.seconds > 0 else 0.0
    click.echo(
        f"materialized {result.model} on {result.host}: {result.files_sent} sent, "
        f"{result.files_resumed} resumed, {result.files_resent} re-sent, "
        f"{result.files_skipped} skipped; {_size(result.bytes_sent)} in {result.seconds:.2f} s "
        f"({rate:.1f} MB/s)"
    )
    click.echo(f"  {result.path} ({result.placed})")
    click.echo(f"  {result.link} -> ../sha256/{result.digest}")
