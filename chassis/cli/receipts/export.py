"""``chassis receipts export``: receipts to the tracing plane, through the outbox."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from chassis.cli.app import App, pass_app
from proofs.export import FORMATS

if TYPE_CHECKING:  # the exporters are imported when the command runs
    from chassis.export.outbox import Item


@click.command(
    "export",
    epilog="""\b
Queues every receipt not yet queued for the destination and format (or every
receipt after --since SEQ) in the ledger's outbox, then delivers everything
pending, in order, each item once under a stable id (Idempotency-Key).
DEST is an http(s):// URL (for otlp-json the collector base: items go to
/v1/traces and /v1/logs under it) or a file (file:///abs/path or a path),
which gets one line per item: the bare OTLP request, CloudEvent or DSSE
envelope, as the Collector's otlpjsonfile receiver and other readers take
it. An http:// URL with credentials (user info, ?token=…) is refused unless
--insecure. Without --to, [export] to of chassis.toml is used; without
either, the rendered items are printed, one per line, and nothing is
queued. Items not delivered stay queued for the next export or
the next automatic export ([export] auto = true). See guides/boundary.md.
Exit status: 0 everything queued for DEST is delivered, 2 bad option or
destination, 3 bad [export] in chassis.toml, 19 items remain queued or
failed (summary and last error given; nothing is lost).
Examples:
  chassis receipts export --format otlp-json --to http://127.0.0.1:4318
  chassis receipts export --format cloudevents --to https://events.example/ingest
  chassis receipts export --format dsse --to ./receipts.jsonl --since 120
  chassis receipts export --retry-only --json
  chassis receipts export --format dsse > receipts.dsse.jsonl""",
)
@click.option(
    "--format",
    "format_name",
    type=click.Choice(FORMATS),
    help="Export format [default: [export] format, else otlp-json].",
)
@click.option("--to", "to", metavar="DEST", help="http(s):// URL or file [default: [export] to].")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    metavar="SEQ",
    help="Receipts after this ledger seq [default: those not yet queued].",
)
@click.option(
    "--retry-only",
    is_flag=True,
    help="Queue nothing; deliver what is queued, failed items included.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow credentials in a plain http:// destination (sent unencrypted).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_app
def export_command(
    app: App,
    format_name: str | None,
    to: str | None,
    since: int | None,
    retry_only: bool,
    insecure: bool,
    as_json: bool,
) -> None:
    """Export receipts as OTLP/JSON, CloudEvents or DSSE to a file or an endpoint."""
    from chassis.export import ExportUndelivered, export_receipts, parse_destination, rendered
    from chassis.export.delivery import DestinationError

    settings = app.stack().export
    format = format_name or settings.format
    if to is not None:
        try:
            destination = parse_destination(to, Path.cwd(), insecure=insecure)
        except DestinationError as e:
            raise DestinationError(f"--to: {e}") from None  # one line, exit 2
    elif settings.to is not None:
        destination = parse_destination(settings.to, app.workspace.root, insecure=insecure)
    else:
        if retry_only:
            raise click.UsageError("--retry-only needs a destination: --to or [export] to")
        for _, body in rendered(app.ledger(), format, since=since or 0):
            click.echo(body.decode())
        return

    def progress(n: int, total: int, item: Item, delivered: bool) -> None:
        app.note(f"export: {n} of {total} {item.item_id} {'ok' if delivered else 'not delivered'}")

    result = export_receipts(
        app.ledger(),
        destination,
        format,
        since=since,
        retry_only=retry_only,
        timeout_s=settings.timeout_ms / 1000,
        progress=progress,
    )

    def human() -> None:
        for line in result.lines():
            click.echo(line)

    app.emit(result.to_dict(), as_json=as_json, human=human)
    if not result.complete:
        counts = result.counts
        raise ExportUndelivered(
            f"{destination.key}: {counts.pending} item(s) still queued, {counts.failed} failed "
            f"({counts.last_error or 'not delivered'}); they stay in the outbox: run "
            "'chassis receipts export' again"
            + (" --retry-only to retry the failed ones" if counts.failed else "")
        )
