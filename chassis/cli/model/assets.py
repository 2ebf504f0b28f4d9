"""``chassis model add|list|show``: model assets recorded in the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from chassis.cli.app import App, pass_app, table

if TYPE_CHECKING:
    from ledger.models import ModelAsset


@click.command(
    "add",
    epilog="""\b
Examples:
  chassis model add tiny --source ./models/tiny
  chassis model add tiny --source ./weights.safetensors --revision v3
  chassis model add org--tiny --source model:hf:org/tiny@main
  chassis model add org--tiny --source hf-cache:~/.cache/huggingface/hub/models--org--tiny

\b
SPEC is a directory (every regular file under it), a single file, hf-cache:PATH
(a models--ORG--NAME directory of a Hugging Face cache, or a snapshot in one),
or model:hf:ORG/NAME[@REV], read offline from the local Hugging Face cache.
Symlinks are followed only inside the source (and, in a Hugging Face cache,
into the repository's blobs/); any other link, a FIFO or a device is refused.
The same manifest again records nothing ("already recorded"); a changed one
is a new revision of NAME.
Exit status: 0 recorded or already recorded; 3 bad name or refused source;
5 key error; 6 not authorised; 7 conflict; 10 no such cache, model or revision.""",
)
@click.argument("name")
@click.option(
    "--source",
    "spec",
    required=True,
    metavar="SPEC",
    help="A directory, a file, hf-cache:PATH or model:hf:ORG/NAME[@REV].",
)
@click.option(
    "--revision",
    default=None,
    metavar="REV",
    help="Hugging Face source: the revision (a ref such as main, or a commit prefix; default "
    "main). Path: a label recorded with the manifest.",
)
@click.option(
    "--hf-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="The Hugging Face hub cache (default: HF_HUB_CACHE, else HF_HOME/hub, else "
    "~/.cache/huggingface/hub).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the recorded manifest as JSON.")
@pass_app
def add_command(
    app: App, name: str, spec: str, revision: str | None, hf_cache: Path | None, as_json: bool
) -> None:
    """Record model NAME: a manifest (path, size, sha256 of every file) of a directory, a
    file or a Hugging Face cache entry.

    Every file is hashed (streamed) before anything is recorded.
    """
    from chassis.models.registry import check_model_name, register_model, resolve_source

    check_model_name(name)  # refused before the ledger is opened
    source = resolve_source(spec, hf_cache=hf_cache, revision=revision)
    asset, appended = register_model(app.ledger(signing=True), name, source)
    entry = asset.current
    data = {
        "name": asset.name,
        "manifest_digest": entry["digest"],
        "revision": entry["revision"],
        "source": entry["source"],
        "files": entry["files"],
        "bytes": entry["bytes"],
        "revisions": len(asset.revisions),
        "appended": appended,
    }
    said = "recorded" if appended else "already recorded"
    revision_text = f", revision {entry['revision']}" if entry["revision"] else ""
    app.emit(
        data,
        as_json=as_json,
        human=lambda: click.echo(
            f"model {asset.name}: {said}: manifest {entry['digest'][:16]} "
            f"({entry['files']} files, {entry['bytes']} bytes{revision_text})"
        ),
    )


@click.command("list", epilog="Example: chassis model list --json")
@click.option("--json", "as_json", is_flag=True, help="Print models as JSON.")
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """Every recorded model.

    Its current manifest (digest, revision, files, bytes), how many manifests
    it has, and the hosts where one is materialized.
    """
    from chassis.models.registry import all_models

    data = [_summary(asset) for asset in all_models(app.ledger())]
    rows = [
        [
            d["name"],
            d["manifest_digest"][:16],
            (d["revision"] or "-")[:12],
            str(d["files"]),
            str(d["bytes"]),
            str(d["revisions"]),
            ", ".join(d["hosts"]) or "-",
        ]
        for d in data
    ]
    app.emit(
        data,
        as_json=as_json,
        human=lambda: (
            table(rows, ["NAME", "MANIFEST", "REVISION", "FILES", "BYTES", "REVISIONS", "HOSTS"])
            if rows
            else click.echo("no models recorded (add one: chassis model add NAME --source PATH)")
        ),
    )


@click.command(
    "show",
    epilog="""\b
Examples:
  chassis model show tiny
  chassis model show model:hf:org/tiny@3f2a91 --files --json

\b
REF is NAME, model:NAME or model:hf:ORG/NAME, each with an optional @REV (a
recorded revision label, a commit prefix, or a manifest digest prefix) that
selects the manifest --files lists (default: the current one).
Exit status: 0 shown; 3 bad reference; 10 no such model or revision.""",
)
@click.argument("ref", metavar="NAME|REF")
@click.option(
    "--files", "with_files", is_flag=True, help="Also list the selected manifest's files."
)
@click.option("--json", "as_json", is_flag=True, help="Print the model as JSON.")
@pass_app
def show_command(app: App, ref: str, with_files: bool, as_json: bool) -> None:
    """A model's manifests and where each is materialized.

    Each manifest with its digest, revision, source, files and bytes (the
    current one marked), then each placement: host, manifest, when, pinned,
    evicted.
    """
    from chassis.models.registry import find_model, parse_ref, revision_entry

    asset = find_model(app.ledger(), ref)
    selected = revision_entry(asset, parse_ref(ref).revision)
    current = asset.current["digest"]
    manifests = [
        {
            "digest": e["digest"],
            "revision": e["revision"],
            "source": e["source"],
            "files": e["files"],
            "bytes": e["bytes"],
            "at": e["at"],
            "current": e is asset.revisions[-1],
        }
        for e in asset.revisions
    ]
    placements = _placements(asset)
    data: dict[str, Any] = {
        "name": asset.name,
        "current": current,
        "selected": selected["digest"],
        "manifests": manifests,
        "placements": placements,
    }
    files: list[dict[str, Any]] = []
    if with_files:
        files = [
            {"path": f.path, "size": f.size, "sha256": f.sha256}
            for f in asset.manifest(selected["digest"])
        ]
        data["manifest_files"] = files

    def human() -> None:
        click.echo(f"model {asset.name}: {len(manifests)} manifest(s), current {current[:16]}")
        table(
            [
                [
                    ("* " if m["current"] else "  ") + m["digest"][:16],
                    (m["revision"] or "-")[:12],
                    str(m["files"]),
                    str(m["bytes"]),
                    m["at"],
                    m["source"],
                ]
                for m in manifests
            ],
            ["  MANIFEST", "REVISION", "FILES", "BYTES", "RECORDED", "SOURCE"],
        )
        if placements:
            click.echo("")
            table(
                [
                    [
                        p["host"],
                        p["digest"][:16],
                        p["at"],
                        "yes" if p["pinned"] else "no",
                        "yes" if p["evicted"] else "no",
                    ]
                    for p in placements
                ],
                ["HOST", "MANIFEST", "MATERIALIZED", "PINNED", "EVICTED"],
            )
        else:
            click.echo("not materialized on any host")
        if with_files:
            click.echo("")
            click.echo(f"files of manifest {selected['digest'][:16]}:")
            table(
                [[f["path"], str(f["size"]), f["sha256"]] for f in files],
                ["PATH", "SIZE", "SHA256"],
            )

    app.emit(data, as_json=as_json, human=human)


def _placements(asset: ModelAsset) -> list[dict[str, Any]]:
    return [
        {
            "host": p["host"],
            "digest": p["digest"],
            "at": p["at"],
            "pinned": bool(p["pinned"]),
            "evicted": bool(p["evicted"]),
        }
        for _, p in sorted(asset.placements.items())
    ]


def _summary(asset: ModelAsset) -> dict[str, Any]:
    entry = asset.current
    hosts = sorted({p["host"] for p in asset.placements.values() if not p["evicted"]})
    return {
        "name": asset.name,
        "manifest_digest": entry["digest"],
        "revision": entry["revision"],
        "source": entry["source"],
        "files": entry["files"],
        "bytes": entry["bytes"],
        "revisions": len(asset.revisions),
        "hosts": hosts,
        "placements": _placements(asset),
    }
