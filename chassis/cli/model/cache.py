"""``chassis model cache …``: the models cached on a host, pins, eviction."""

from __future__ import annotations

from typing import Any

import click

from chassis.cli.app import App, pass_app, table

host_option = click.option("--host", "host", required=True, metavar="HOST", help="The host.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")


def _size(value: object) -> str:
    if not isinstance(value, int):
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


@click.group(
    "cache",
    epilog="""\b
A model lives on a host in <root>/models/sha256/<manifest digest>/, with
<root>/models/by-name/<name> pointing at it. 'list' joins what is there with
the ledger: names, pinned, last materialized or used, and which active
releases use it (their plan gives a component CHASSIS_MODEL_DIR there).
Examples:
  chassis model cache list --host gpu-1
  chassis model cache pin --host gpu-1 --model tiny
  chassis model cache evict --host gpu-1 --watermark 20% --dry-run""",
)
def cache_group() -> None:
    """The model cache on a host: list, pin, unpin, evict."""


@cache_group.command(
    "list",
    epilog="""\b
STATE: cached (on the host and in the ledger), missing (the ledger has it
there, the host does not), unrecorded (on the host, unknown to the ledger).
Rows are oldest use first: the order eviction takes them in.
Exit status: 0; 10 unknown host; 11 the host cannot be reached.
Example: chassis model cache list --host gpu-1 --json""",
)
@host_option
@json_option
@pass_app
def list_command(app: App, host: str, as_json: bool) -> None:
    """Models in a host's cache, oldest use first, with the ledger's view of each."""
    from chassis.models.cache import list_cache

    listing = list_cache(app.ledger(), app.workspace, host)
    data = listing.to_dict()

    def human() -> None:
        disk = listing.disk
        click.echo(
            f"{host}: {listing.root}/models"
            + (f" ({_size(disk.free)} free of {_size(disk.size)})" if disk else "")
        )
        rows = [
            [
                e.digest[:12],
                ",".join(e.names) or "-",
                _size(e.bytes),
                e.state,
                "pinned" if e.pinned else "",
                (e.last_used or "-")[:19],
                "; ".join(e.referenced_by) or "-",
            ]
            for e in listing.entries
        ]
        if rows:
            table(rows, ["DIGEST", "NAMES", "SIZE", "STATE", "PIN", "LAST USED", "IN USE BY"])
        else:
            click.echo("  no models cached")

    app.emit(data, as_json=as_json, human=human)


def _pin(app: App, host: str, model: str, digest: str | None, pinned: bool, as_json: bool) -> None:
    from chassis.models.cache import pin

    data = pin(app.ledger(signing=True), host=host, model=model, digest=digest, pinned=pinned)
    word = "pinned" if pinned else "unpinned"
    app.emit(
        data,
        as_json=as_json,
        human=lambda: click.echo(
            f"{model} {data['digest'][:12]}… on {host}: {word}"
            + ("" if data["changed"] else " (already)")
        ),
    )


model_option = click.option("--model", "model", required=True, metavar="NAME", help="The model.")
digest_option = click.option(
    "--digest",
    default=None,
    metavar="PREFIX",
    help="Which copy (a digest prefix); default: the newest manifest on the host.",
)


@cache_group.command(
    "pin",
    epilog="""\b
A pinned copy is never evicted. Recorded as a signed event.
Exit status: 0 (also when already pinned); 10 unknown host or model, or no
copy of it on the host.
Example: chassis model cache pin --host gpu-1 --model tiny""",
)
@host_option
@model_option
@digest_option
@json_option
@pass_app
def pin_command(app: App, host: str, model: str, digest: str | None, as_json: bool) -> None:
    """Keep a model's copy on a host: eviction never takes it."""
    _pin(app, host, model, digest, True, as_json)


@cache_group.command(
    "unpin",
    epilog="Exit status: 0 (also when not pinned); 10 unknown host or model, or no copy there.\n"
    "Example: chassis model cache unpin --host gpu-1 --model tiny",
)
@host_option
@model_option
@digest_option
@json_option
@pass_app
def unpin_command(app: App, host: str, model: str, digest: str | None, as_json: bool) -> None:
    """Let eviction take a model's copy on a host again."""
    _pin(app, host, model, digest, False, as_json)


@cache_group.command(
    "evict",
    epilog="""\b
Least recently used first (when each copy was last materialized, or last
used by a recorded revision), stopping as soon as the host's free space
(df of its models directory) is at or above --watermark: bytes free (20GiB)
or a percentage of the disk (15%). With --model only that model's copies are
considered (without --watermark: all of them). Never evicted: a pinned copy,
one an active release on the host uses (or an operation in progress), one
the ledger does not know. Each eviction removes the by-name pointers at the
directory, then rm -rf of exactly <root>/models/sha256/<digest>, and records
an 'evicted' event with the bytes freed.
Exit status: 0 (check 'satisfied' in --json: protected copies may keep the
free space below the watermark); 2 neither --model nor --watermark, or a bad
watermark; 9 every copy --model named is pinned or in use; 10 unknown host or
model; 11 the host cannot be reached.
Examples:
  chassis model cache evict --host gpu-1 --watermark 50GiB
  chassis model cache evict --host gpu-1 --model tiny --dry-run --json""",
)
@host_option
@click.option("--model", "model", default=None, metavar="NAME", help="Only this model's copies.")
@click.option(
    "--watermark", default=None, metavar="BYTES|PCT", help="Free space wanted (20GiB or 15%)."
)
@click.option("--dry-run", is_flag=True, help="Say what would be evicted; change nothing.")
@click.option("--reason", default=None, metavar="TEXT", help="Recorded with each eviction.")
@json_option
@pass_app
def evict_command(
    app: App,
    host: str,
    model: str | None,
    watermark: str | None,
    dry_run: bool,
    reason: str | None,
    as_json: bool,
) -> None:
    """Evict least recently used models from a host down to a free-space watermark."""
    from chassis.models.cache import evict, parse_watermark

    mark = parse_watermark(watermark) if watermark is not None else None
    result = evict(
        app.ledger(signing=not dry_run),
        app.workspace,
        host=host,
        model=model,
        watermark=mark,
        dry_run=dry_run,
        reason=reason,
        progress=app.note,
    )
    data: dict[str, Any] = result.to_dict()

    def human() -> None:
        verb = "would evict" if dry_run else "evicted"
        for item in result.evicted:
            click.echo(
                f"{verb} {','.join(item['names'])} {item['digest'][:12]}… "
                f"({_size(item['bytes'])}, last used {str(item['last_used'])[:19]})"
            )
        for item in result.skipped:
            click.echo(
                f"kept {','.join(item['names']) or '-'} {item['digest'][:12]}…: {item['why']}"
            )
        if not result.evicted:
            click.echo(f"{host}: nothing {verb}")
        if result.target_free is not None:
            click.echo(
                f"{host}: {_size(result.free_after)} free, watermark {result.watermark} "
                f"({_size(result.target_free)}): "
                + ("met" if result.satisfied else "NOT met (the rest is pinned or in use)")
            )

    app.emit(data, as_json=as_json, human=human)
