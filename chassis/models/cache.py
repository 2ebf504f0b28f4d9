"""The model cache on a host: what is in ``<root>/models/sha256/``, joined
with the ledger; pins; LRU eviction down to a free-space watermark.

On a host a model lives in ``<root>/models/sha256/<manifest digest>/`` and
``<root>/models/by-name/<name>`` points at it (``../sha256/<digest>``). What
is there is probed through the host's connector (``du``, ``df``, ``find``);
what it is, when it was put there and whether it is pinned comes from the
``ModelAsset`` aggregates (``ledger.models``); whether a release uses it
comes from the installations: a digest is *referenced* on a host while some
installation's plan active there (or the plan of an operation in progress)
gives a component ``CHASSIS_MODEL_DIR`` = that directory.

Eviction (``guides/model_assets.md``, "Cache and swap"): oldest first by the
last time it was materialized or used, never a pinned copy, never a
referenced one, never a directory the ledger does not know; it stops as soon
as the file system's free space is at or above the watermark. Each eviction
removes the ``by-name`` pointers that point at the directory, then the
directory (``rm -rf`` of exactly that path), then records
``ModelAsset.Evicted`` (the outcome: intent and I/O are one act here, and a
half-removed directory is no longer complete, which the deploy pre-flight
sees).

:func:`require_models` is the deploy pre-flight: every model a plan names
is complete (each manifest file present with its size) on its host.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID

import msgspec

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError, one_line
from chassis.engine.plan import MODEL_DIR_ENV, ModelRef, Plan, model_dir
from chassis.errors import ChassisError, NotFound
from chassis.hosts import get_host, resolve_root
from chassis.models.registry import all_models, find_model, parse_ref, revision_entry
from chassis.stack.spec import parse_size
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.canonical import format_timestamp
from ledger.errors import NotFoundError
from ledger.hosts import HostSettings
from ledger.installations import Installation
from ledger.models import ModelAsset, ModelFile

Progress = Callable[[str], None]

DIGEST = re.compile(r"[0-9a-f]{64}\Z")
NOTHING_DONE = "nothing was recorded or changed"
PROBE_TIMEOUT_S = 120.0


class CacheError(ChassisError):
    """A cache command that cannot run as asked (exit 2: usage)."""

    exit_code = 2


class EvictRefused(ChassisError):
    """Every copy ``--model`` named is pinned or in use (exit 9)."""

    exit_code = 9


class ModelMissing(NotFound):
    """A model of the plan is not (completely) on its host: materialize it first (exit 10)."""


# -- layout -----------------------------------------------------------------------------


def sha_root(root: str) -> str:
    return "/".join([root.rstrip("/"), "models", "sha256"])


def by_name_root(root: str) -> str:
    return "/".join([root.rstrip("/"), "models", "by-name"])


# -- probes (through the connector) ------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    size: int
    free: int

    def to_dict(self) -> dict[str, int]:
        return {"size": self.size, "free": self.free}


def disk_space(connector: Connector, root: str) -> Disk:
    """``df`` of the file system holding the models (or the root, before any)."""
    models = "/".join([root.rstrip("/"), "models"])
    script = (
        f'p={shlex.quote(models)}; [ -d "$p" ] || p={shlex.quote(root)}; '
        'while [ ! -d "$p" ]; do p=$(dirname -- "$p"); done; df -Pk -- "$p"'
    )
    result = connector.run(script, timeout=30, check=True, display="df (models cache)")
    fields = result.stdout.strip().splitlines()[-1].split()
    try:
        return Disk(size=int(fields[1]) * 1024, free=int(fields[3]) * 1024)
    except (IndexError, ValueError):
        raise ChassisError(
            f"host {connector.name}: cannot read df output {one_line(result.stdout)!r}"
        ) from None


def cached_dirs(connector: Connector, root: str) -> dict[str, int]:
    """digest → bytes (``du``) of every ``sha256/<digest>`` directory on the host.
    Other names there (a materialization in progress) are left out."""
    script = (
        f'd={shlex.quote(sha_root(root))}; [ -d "$d" ] || exit 0; cd -- "$d" || exit 1; '
        'for x in *; do [ -d "$x" ] && [ ! -L "$x" ] || continue; '
        'b=$(du -sb -- "$x" 2>/dev/null | cut -f1); '
        '[ -n "$b" ] || b=$(( $(du -sk -- "$x" | cut -f1) * 1024 )); '
        'printf "%s %s\\n" "$x" "$b"; done'
    )
    result = connector.run(script, timeout=PROBE_TIMEOUT_S, check=True, display="du (models cache)")
    found: dict[str, int] = {}
    for line in result.stdout.splitlines():
        name, _, size = line.partition(" ")
        if DIGEST.match(name) and size.isdigit():
            found[name] = int(size)
    return found


def missing_files(connector: Connector, directory: str, files: list[ModelFile]) -> list[str]:
    """Manifest paths absent from ``directory`` or of another size (all of
    them when the directory is absent); a symlink is not a file."""
    script = (
        f'd={shlex.quote(directory)}; [ -d "$d" ] || exit 3; cd -- "$d" || exit 3; '
        "find . -type f -printf '%s %P\\0'"
    )
    result = connector.run(script, timeout=PROBE_TIMEOUT_S, display="find (model files)")
    if result.exit_code == 3:
        return [f.path for f in files]
    if not result.ok:
        raise ChassisError(
            f"host {connector.name}: cannot list {directory}: {one_line(result.stderr)}"
        )
    sizes: dict[str, int] = {}
    for record in result.stdout.split("\0"):
        size, _, path = record.partition(" ")
        if size.isdigit():
            sizes[path] = int(size)
    return [f.path for f in files if sizes.get(f.path) != f.size]


# -- the deploy pre-flight ----------------------------------------------------------------


def require_models(
    ledger: Ledger,
    ws: Workspace,
    plan: Plan,
    settings: Mapping[str, HostSettings],
    progress: Progress,
) -> None:
    """Raise ``ModelMissing`` (exit 10) naming each model of ``plan`` that is
    not complete on its host, with the command that puts it there; before
    any intent, so nothing was recorded or changed."""
    wanted: dict[str, dict[str, ModelRef]] = {}
    for host in plan.hosts:
        for component in host.components:
            if isinstance(component.model, ModelRef):
                wanted.setdefault(host.host, {})[component.model.digest] = component.model
    if not wanted:
        return
    progress(f"pre-flight: models on {', '.join(sorted(wanted))}")
    from chassis.connect import connector_from_settings, recorded_pin  # fabric: only here
    problems: list[str] = []
    for name in sorted(wanted):
        host_plan = plan.host(name)
        with connector_from_settings(
            name, settings[name], ws, pin=recorded_pin(ws, name)
        ) as connector:
            for digest, ref in sorted(wanted[name].items()):
                asset = ledger.find(ModelAsset, ModelAsset.id_for(ref.name))
                if asset is None or digest not in asset.files:
                    raise NotFound(f"model {ref.name} has no manifest {digest[:12]}… in the ledger")
                files = asset.manifest(digest)
                missing = missing_files(connector, model_dir(host_plan.root, digest), files)
                if missing:
                    how = (
                        ""
                        if len(missing) == len(files)
                        else f" ({len(missing)} of {len(files)} files missing or incomplete, "
                        f"e.g. {missing[0]})"
                    )
                    problems.append(
                        f"model {ref.name} (digest {digest[:12]}…) is not on host {name}{how}: "
                        f"chassis model materialize --model {ref.name} --target {name}"
                    )
    if len(problems) == 1:
        raise ModelMissing(f"{problems[0]}; {NOTHING_DONE}")
    if problems:
        for line in problems:
            progress(line)
        raise ModelMissing(f"{len(problems)} models are not on their hosts; {NOTHING_DONE}")


# -- the ledger's side ----------------------------------------------------------------


def _all(ledger: Ledger, topic: str) -> Iterator[UUID]:
    seen: set[str] = set()
    for row in ledger.recorder.select_notifications(start=None, limit=1_000_000, topics=[topic]):
        key = str(row.originator_id)
        if key not in seen:
            seen.add(key)
            yield UUID(key)


def all_installations(ledger: Ledger) -> list[Installation]:
    found: list[Installation] = []
    for key in _all(ledger, Installation.Created.TOPIC):
        try:
            found.append(ledger.load(Installation, key))
        except NotFoundError:
            continue
    return found


@dataclass
class Uses:
    """How the installations use the models of one host."""

    referenced: dict[str, list[str]] = field(default_factory=dict)
    """digest → ``APP/ENV rREV COMPONENT`` of each active (or in-flight) use."""
    last_used: dict[str, str] = field(default_factory=dict)
    """digest → when a recorded revision using it on the host last finished (or started)."""


def _plan_digests(plan: Plan, host: str) -> dict[str, str]:
    """component → model digest on ``host``: the recorded model, or the
    digest ``CHASSIS_MODEL_DIR`` names under the host's cache."""
    found: dict[str, str] = {}
    for host_plan in plan.hosts:
        if host_plan.host != host:
            continue
        prefix = sha_root(host_plan.root) + "/"
        for component in host_plan.components:
            if isinstance(component.model, ModelRef):
                found[component.name] = component.model.digest
                continue
            value = component.env.get(MODEL_DIR_ENV, "")
            if value.startswith(prefix) and DIGEST.match(value[len(prefix) :].rstrip("/")):
                found[component.name] = value[len(prefix) :].rstrip("/")
    return found


def host_uses(ledger: Ledger, host: str) -> Uses:
    uses = Uses()
    for installation in all_installations(ledger):
        name = f"{installation.app}/{installation.environment}"
        active = installation.hosts.get(host)
        active_revision = int(active["revision"]) if active else None
        lease = installation.lease
        in_flight = int(lease["revision"]) if lease else None
        entries = {int(e["revision"]): e for e in installation.revisions}
        for key, data in installation.plans.items():
            try:
                plan = msgspec.convert(data, Plan)
            except msgspec.ValidationError:
                continue
            revision = int(key)
            digests = _plan_digests(plan, host)
            entry = entries.get(revision, {})
            at = entry.get("finished") or entry.get("started")
            for component, digest in sorted(digests.items()):
                if at and str(at) > uses.last_used.get(digest, ""):
                    uses.last_used[digest] = str(at)
                if revision == active_revision:
                    uses.referenced.setdefault(digest, []).append(f"{name} r{revision} {component}")
                elif revision == in_flight:
                    uses.referenced.setdefault(digest, []).append(
                        f"{name} r{revision} {component} (in progress)"
                    )
    return uses


# -- listing ------------------------------------------------------------------------


@dataclass
class CacheEntry:
    digest: str
    bytes: int | None
    """On the host (``du``); None when the ledger has it there but the host does not."""
    names: list[str]
    pinned: bool
    materialized_at: str | None
    last_used: str | None
    """The later of when it was materialized and when a revision using it on
    the host last ran; now, while a release on the host uses it."""
    referenced_by: list[str]

    @property
    def on_disk(self) -> bool:
        return self.bytes is not None

    @property
    def recorded(self) -> bool:
        return self.materialized_at is not None

    @property
    def state(self) -> str:
        if not self.recorded:
            return "unrecorded"
        return "cached" if self.on_disk else "missing"

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "bytes": self.bytes,
            "names": self.names,
            "state": self.state,
            "pinned": self.pinned,
            "materialized_at": self.materialized_at,
            "last_used": self.last_used,
            "referenced_by": self.referenced_by,
        }


@dataclass
class CacheListing:
    host: str
    root: str
    disk: Disk | None
    entries: list[CacheEntry]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "root": self.root,
            "disk": self.disk.to_dict() if self.disk else None,
            "models": [e.to_dict() for e in self.entries],
        }


def placements_on(ledger: Ledger, host: str) -> dict[str, list[tuple[ModelAsset, dict[str, Any]]]]:
    """digest → (model, placement) of every copy the ledger has on ``host`` (not evicted)."""
    found: dict[str, list[tuple[ModelAsset, dict[str, Any]]]] = {}
    for asset in all_models(ledger):
        for placement in asset.placements.values():
            if placement["host"] == host and not placement.get("evicted"):
                found.setdefault(str(placement["digest"]), []).append((asset, placement))
    return found


def _listing(ledger: Ledger, ws: Workspace, host_name: str, connector: Connector) -> CacheListing:
    host = get_host(ledger, host_name)
    root = resolve_root(host, ws.root)
    on_disk = cached_dirs(connector, root)
    try:
        disk: Disk | None = disk_space(connector, root)
    except (ConnectorError, ChassisError):
        disk = None
    placed = placements_on(ledger, host_name)
    uses = host_uses(ledger, host_name)
    now = format_timestamp(datetime.now(UTC))
    entries: list[CacheEntry] = []
    for digest in sorted({*on_disk, *placed}):
        copies = placed.get(digest, [])
        materialized = max((str(p["at"]) for _, p in copies), default=None)
        used = max([t for t in (materialized, uses.last_used.get(digest)) if t], default=None)
        if uses.referenced.get(digest):
            used = now  # in use: as recent as it gets
        entries.append(
            CacheEntry(
                digest=digest,
                bytes=on_disk.get(digest),
                names=sorted({a.name for a, _ in copies}),
                pinned=any(bool(p.get("pinned")) for _, p in copies),
                materialized_at=materialized,
                last_used=used,
                referenced_by=sorted(uses.referenced.get(digest, [])),
            )
        )
    entries.sort(key=lambda e: (e.last_used or "", e.digest))
    return CacheListing(host_name, root, disk, entries)


def list_cache(ledger: Ledger, ws: Workspace, host_name: str) -> CacheListing:
    """What the host's cache holds, oldest use first, with the ledger's view of each."""
    from chassis.connect import connector_for  # fabric: only when a host is asked

    host = get_host(ledger, host_name)
    with connector_for(host, ws) as connector:
        return _listing(ledger, ws, host_name, connector)


# -- pins -----------------------------------------------------------------------------


def _actor(ledger: Ledger) -> str:
    if ledger.signer is None:
        raise ChassisError("recording cache changes needs a signing key")
    return ledger.signer.keyid


def _choose_copy(asset: ModelAsset, host: str, digest: str | None) -> str:
    """The digest of the copy of ``asset`` on ``host`` that ``digest`` (a
    prefix) names; without one, the newest manifest that is there."""
    there = [
        str(p["digest"])
        for p in asset.placements.values()
        if p["host"] == host and not p.get("evicted")
    ]
    if digest is not None:
        matches = [d for d in there if d.startswith(digest.lower())]
        if len(matches) != 1:
            raise NotFound(
                f"model {asset.name} has {'no' if not matches else 'more than one'} copy on host "
                f"{host} whose digest starts with {digest!r} (see 'chassis model cache list "
                f"--host {host}')"
            )
        return matches[0]
    for revision in reversed(asset.revisions):
        if revision["digest"] in there:
            return str(revision["digest"])
    raise NotFound(
        f"model {asset.name} has no copy on host {host} "
        f"(chassis model materialize --model {asset.name} --target {host})"
    )


def pin(
    ledger: Ledger, *, host: str, model: str, digest: str | None, pinned: bool
) -> dict[str, Any]:
    """Record ``CachePinned`` for the copy of ``model`` on ``host`` (nothing
    when it already is so)."""
    get_host(ledger, host)
    asset = find_model(ledger, model)  # NotFound (exit 10) lists the known models
    revision = parse_ref(model).revision
    if digest is None and revision is not None:
        digest = str(revision_entry(asset, revision)["digest"])
    chosen = _choose_copy(asset, host, digest)
    changed = False

    def command(a: ModelAsset) -> None:
        nonlocal changed
        placement = a.placements.get(f"{host}/{chosen}")
        changed = placement is not None and bool(placement.get("pinned")) != pinned
        if changed:
            a.trigger(
                ModelAsset.CachePinned,
                keyid=_actor(ledger),
                host=host,
                manifest_digest=chosen,
                pinned=pinned,
            )

    ledger.update(ModelAsset, asset.id, command)
    return {
        "host": host,
        "model": asset.name,
        "digest": chosen,
        "pinned": pinned,
        "changed": changed,
    }


# -- eviction --------------------------------------------------------------------------


@dataclass(frozen=True)
class Watermark:
    text: str
    bytes: int | None = None
    percent: float | None = None

    def target(self, disk: Disk) -> int:
        """The free bytes wanted on ``disk``."""
        if self.percent is not None:
            return int(disk.size * self.percent / 100)
        return int(self.bytes or 0)


def parse_watermark(text: str) -> Watermark:
    """``BYTES`` (``"20GiB"``, ``"5000000"``) or ``PCT`` (``"15%"``) of free space."""
    value = text.strip()
    try:
        if value.endswith("%"):
            percent = float(value[:-1])
            if not 0 <= percent <= 100:
                raise ValueError("a percentage is 0-100")
            return Watermark(text=value, percent=percent)
        return Watermark(text=value, bytes=parse_size(int(value) if value.isdigit() else value))
    except ValueError as e:
        raise CacheError(
            f"--watermark {text!r}: expected free bytes (20GiB, 5000000) or a percentage "
            f"of the disk (15%): {e}"
        ) from None


@dataclass
class EvictResult:
    host: str
    dry_run: bool
    watermark: str | None
    target_free: int | None
    free_before: int | None
    free_after: int | None
    evicted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def satisfied(self) -> bool:
        if self.target_free is None or self.free_after is None:
            return True
        return self.free_after >= self.target_free

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "dry_run": self.dry_run,
            "watermark": self.watermark,
            "target_free": self.target_free,
            "free_before": self.free_before,
            "free_after": self.free_after,
            "satisfied": self.satisfied,
            "evicted": self.evicted,
            "skipped": self.skipped,
        }


def _protection(entry: CacheEntry) -> str | None:
    if not entry.recorded:
        return "not recorded in the ledger (left alone: remove it by hand if it is yours)"
    if entry.pinned:
        return "pinned"
    if entry.referenced_by:
        return "in use by " + ", ".join(entry.referenced_by)
    return None


def _remove(connector: Connector, root: str, digest: str) -> None:
    """The ``by-name`` pointers at ``sha256/<digest>``, then that directory."""
    if not DIGEST.match(digest):  # it becomes a path: never anything but a digest
        raise ChassisError(f"refusing to remove {digest!r}: not a sha256 digest")
    target = "/".join([sha_root(root), digest])
    models = "/".join([root.rstrip("/"), "models"])
    relative = f"../sha256/{digest}"
    patterns = "|".join(shlex.quote(p) for p in (relative, relative + "/", target, target + "/"))
    script = (
        # Never through a planted link: models/ and models/sha256 must be directories.
        f"for p in {shlex.quote(models)} {shlex.quote(sha_root(root))}; do "
        '[ -L "$p" ] && { echo "$p is a symlink: refusing to remove through it" >&2; exit 5; }; '
        "done; "
        f"n={shlex.quote(by_name_root(root))}; "
        'if [ -d "$n" ]; then for l in "$n"/* "$n"/.[!.]*; do [ -L "$l" ] || continue; '
        f'case "$(readlink -- "$l")" in {patterns}) rm -f -- "$l";; esac; done; fi; '
        f"rm -rf -- {shlex.quote(target)} && [ ! -e {shlex.quote(target)} ]"
    )
    connector.run(script, timeout=PROBE_TIMEOUT_S, check=True, display=f"rm -rf {target}")


def evict(
    ledger: Ledger,
    ws: Workspace,
    *,
    host: str,
    model: str | None = None,
    watermark: Watermark | None = None,
    dry_run: bool = False,
    reason: str | None = None,
    progress: Progress = lambda _: None,
) -> EvictResult:
    """Evict copies on ``host``, least recently used first, until its free
    space reaches ``watermark`` (without one: every evictable copy of
    ``model``). Pinned, referenced and unrecorded copies are skipped, and
    said so."""
    if model is None and watermark is None:
        raise CacheError("evict needs --model NAME, --watermark BYTES|PCT, or both")
    if not dry_run:
        _actor(ledger)
    if model is not None:
        model = find_model(ledger, model).name  # NotFound (exit 10) lists the known models
    from chassis.connect import connector_for  # fabric: only when a host is asked

    with connector_for(get_host(ledger, host), ws) as connector:
        listing = _listing(ledger, ws, host, connector)
        if watermark is not None and listing.disk is None:
            raise ChassisError(f"host {host}: cannot read its free space (df); {NOTHING_DONE}")
        disk = listing.disk
        target = watermark.target(disk) if watermark is not None and disk is not None else None
        free = disk.free if disk is not None else None
        result = EvictResult(
            host, dry_run, watermark.text if watermark else None, target, free, free
        )
        candidates = [
            e for e in listing.entries if e.on_disk and (model is None or model in e.names)
        ]
        if model is not None and not candidates:
            raise NotFound(f"model {model} has no copy on host {host}")
        for entry in candidates:  # oldest use first
            if target is not None and free is not None and free >= target:
                break
            why = _protection(entry)
            if why is None and not dry_run:
                # Pinned or put to use since the listing? Asked again just before the removal.
                now = placements_on(ledger, host).get(entry.digest, [])
                users = host_uses(ledger, host).referenced.get(entry.digest)
                if any(p.get("pinned") for _, p in now):
                    why = "pinned"
                elif users:
                    why = "in use by " + ", ".join(sorted(users))
            if why is not None:
                result.skipped.append({"digest": entry.digest, "names": entry.names, "why": why})
                continue
            size = entry.bytes or 0
            said = (
                f"watermark {watermark.text}: {free} bytes free, {target} wanted"
                if watermark is not None
                else f"--model {model}"
            ) + (f": {reason}" if reason else "")
            if not dry_run:
                progress(
                    f"{host}: evicting {'/'.join(entry.names)} {entry.digest[:12]}… ({size} bytes)"
                )
                _remove(connector, listing.root, entry.digest)
                for asset, _ in placements_on(ledger, host).get(entry.digest, []):
                    record = partial(_record_evicted, ledger, host=host, digest=entry.digest)
                    ledger.update(ModelAsset, asset.id, partial(record, size=size, reason=said))
                free = disk_space(connector, listing.root).free
            elif free is not None:
                free += size
            result.evicted.append(
                {
                    "digest": entry.digest,
                    "names": entry.names,
                    "bytes": size,
                    "last_used": entry.last_used,
                    "reason": said,
                }
            )
        result.free_after = free
    if model is not None and not result.evicted and result.skipped:
        raise EvictRefused(
            f"model {model} on host {host}: nothing evicted: "
            + "; ".join(f"{s['digest'][:12]}… {s['why']}" for s in result.skipped)
        )
    return result


def _record_evicted(
    ledger: Ledger, asset: ModelAsset, *, host: str, digest: str, size: int, reason: str
) -> None:
    placement = asset.placements.get(f"{host}/{digest}")
    if placement is None or placement.get("evicted"):
        return
    asset.trigger(
        ModelAsset.Evicted,
        keyid=_actor(ledger),
        host=host,
        manifest_digest=digest,
        bytes_freed=size,
        reason=reason,
    )
