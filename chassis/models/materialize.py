"""Materialize a model on a host: admission, a plan, verified streaming
transfer with resume, atomic placement (``guides/model_assets.md``).

:func:`plan_materialize` first judges the host from its *recorded* facts
(the runtime's own requirements, the model against the largest GPU, the
bytes to send against the disk holding the host's root), then takes one
inventory of the model on the host (``chassis.models.transfer``) and decides
per file: ``skip`` (present; with ``verify`` re-hashed there), ``resume``
(a partial of N bytes is there) or ``send``. Nothing is appended.

:func:`materialize` carries a plan out, intent first (DESIGN.md §1,
principle 2): ``MaterializeStarted`` (the plan), each file streamed to the
host's receiver which computes its SHA-256 as it writes, ``FilesPlaced``
outcomes in batches, the complete directory renamed into
``models/sha256/<digest>`` and ``models/by-name/<name>`` pointed at it, and
``Materialized``. A file whose bytes do not match on the host is sent once
more from zero (``resent``); a failure appends ``Materialized(ok=False)``
and raises one line. An interrupted run leaves its partial files on the
host: the next run skips what arrived whole and resumes the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.connectors.base import Connector, name_problem
from adapters.errors import ConnectorError, one_line
from chassis.admission import GIB, evaluate, resolve_runtime
from chassis.errors import ChassisError, NotFound
from chassis.hosts import HostLike, resolve_root
from chassis.models import transfer
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.canonical import canonical_json
from ledger.hosts import Host
from ledger.models import ModelAsset, ModelFile

__all__ = [
    "AdmissionRefused",
    "FilePlan",
    "MaterializeError",
    "MaterializePlan",
    "MaterializeResult",
    "host_connector",
    "human_size",
    "materialize",
    "plan_materialize",
    "resolve_model",
]

BATCH = 100
"""Outcomes per ``FilesPlaced`` event."""
STREAM_TIMEOUT_S = 600.0
"""How long one chunk of a file may take to be accepted, and the receiver to
finish (fsync, rename) after the last (SSH: also the host's silence limit)."""
COMMAND_TIMEOUT_S = 120.0
VERIFY_RATE = 50 * 10**6
"""Bytes per second assumed for re-hashing files on the host (its timeout)."""
CHUNK = 1 << 20
GROUP_BYTES = 64 << 20
GROUP_FILES = 1000
"""Files sent through one receiver on the host: a model of many small files
costs a process there per group, not per file; a larger file goes alone."""

Progress = Callable[[str], None]
SENT = frozenset({"sent", "resumed", "resent"})
"""Outcomes of a file that arrived (and was verified) on the host."""

EXIT_VERIFICATION = 8
EXIT_UNREACHABLE = 11
EXIT_ADMISSION = 13


class MaterializeError(ChassisError):
    """A materialization that could not be done: one line, with its exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ModelSourceMissing(MaterializeError, NotFound):
    """The model's recorded source is not on this machine (exit 10)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=10)


class AdmissionRefused(ChassisError):
    """The host's recorded facts (or its free space now) do not admit the
    model: exit 13, with stable reason codes."""

    exit_code = EXIT_ADMISSION

    def __init__(self, model: str, host: str, admission: dict[str, Any]) -> None:
        self.model = model
        self.host = host
        self.admission = admission
        runtime = admission.get("runtime")
        reasons = "; ".join(f"{r['code']} ({r['detail']})" for r in admission["reasons"])
        against = f" for runtime {runtime}" if runtime else ""
        super().__init__(f"host {host} refused model {model}{against}: {reasons}")

    @property
    def codes(self) -> list[str]:
        return [r["code"] for r in self.admission["reasons"]]


@dataclass(frozen=True)
class FilePlan:
    path: str
    size: int
    sha256: str
    action: str
    """``skip``, ``resume`` or ``send``."""
    offset: int = 0
    """``resume``: bytes of it the host holds already (its ``.part``)."""
    reason: str = ""
    repair: str | None = None
    """Why the host's copy is not kept (``wrong-sha256 in sha256`` …), if it has one."""

    @property
    def to_send(self) -> int:
        return 0 if self.action == "skip" else self.size - self.offset

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "action": self.action,
            "offset": self.offset,
            "bytes_to_send": self.to_send,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class MaterializePlan:
    """What a materialization will do; data (DESIGN.md §1, principle 5)."""

    model: str
    digest: str
    """The manifest digest: the directory name on the host."""
    host: str
    root: str
    source: str
    verify: bool
    admission: dict[str, Any]
    files: tuple[FilePlan, ...]
    complete_dir: bool
    """``sha256/<digest>`` exists on the host already."""

    @property
    def models_dir(self) -> str:
        return posixpath.join(self.root, "models")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_to_send(self) -> int:
        return sum(f.to_send for f in self.files)

    def of(self, action: str) -> list[FilePlan]:
        return [f for f in self.files if f.action == action]

    def summary(self) -> dict[str, Any]:
        """What ``MaterializeStarted`` records (and what :attr:`plan_digest` covers)."""
        return {
            "model": self.model,
            "root": self.root,
            "verify_sha256": self.verify,
            "total_bytes": self.total_bytes,
            "bytes_to_send": self.bytes_to_send,
            "send": [f.path for f in self.of("send")],
            "resume": [{"path": f.path, "offset": f.offset} for f in self.of("resume")],
            "skip": [f.path for f in self.of("skip")],
            "admission": self.admission,
        }

    @property
    def plan_digest(self) -> str:
        return hashlib.sha256(
            b"chassis.model-plan.v1\x00" + canonical_json(self.summary())
        ).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "manifest_digest": self.digest,
            "host": self.host,
            "root": self.root,
            "path": posixpath.join(self.models_dir, "sha256", self.digest),
            "link": posixpath.join(self.models_dir, "by-name", self.model),
            "verify_sha256": self.verify,
            "admission": self.admission,
            "total_bytes": self.total_bytes,
            "bytes_to_send": self.bytes_to_send,
            "files_skipped": len(self.of("skip")),
            "files_resumed": len(self.of("resume")),
            "files_sent": len(self.of("send")),
            "complete_dir": self.complete_dir,
            "plan_digest": self.plan_digest,
            "files": [f.to_dict() for f in self.files],
        }


@dataclass
class MaterializeResult:
    model: str
    digest: str
    host: str
    path: str
    link: str
    placed: str = ""
    """``renamed`` (the partial directory became the model), ``merged``
    (files repaired into an existing one) or ``present`` (nothing to move)."""
    bytes_sent: int = 0
    files_sent: int = 0
    files_resumed: int = 0
    files_resent: int = 0
    files_skipped: int = 0
    seconds: float = 0.0
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def files_transferred(self) -> int:
        return self.files_sent + self.files_resumed + self.files_resent

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "manifest_digest": self.digest,
            "host": self.host,
            "ok": True,
            "path": self.path,
            "link": self.link,
            "placed": self.placed,
            "bytes_sent": self.bytes_sent,
            "files_sent": self.files_sent,
            "files_resumed": self.files_resumed,
            "files_resent": self.files_resent,
            "files_skipped": self.files_skipped,
            "seconds": round(self.seconds, 3),
            "outcomes": self.outcomes,
        }


# -- the model ---------------------------------------------------------------------


def resolve_model(
    ledger: Ledger, ref: str, *, record: bool, hf_cache: Path | None = None
) -> tuple[ModelAsset, str]:
    """The model ``ref`` names and the manifest digest it selects (``@REV``,
    else the current one). With ``record`` a ``model:hf:`` reference not
    recorded yet is recorded (``ensure_model``); without, nothing is appended:
    such a model is read from the local cache into an unsaved aggregate, so
    a dry run can plan it."""
    from chassis.models.registry import (
        ensure_model,
        find_model,
        parse_ref,
        resolve_source,
        revision_entry,
    )

    wanted = parse_ref(ref)
    if record:
        model = ensure_model(ledger, ref, hf_cache=hf_cache)
    else:
        try:
            model = find_model(ledger, ref)
        except NotFound:
            if wanted.hf_repo is None:
                raise
            from chassis.models.manifest import build_manifest

            source = resolve_source(ref, hf_cache=hf_cache)
            model = ModelAsset.register(
                name=wanted.name,
                revision=source.revision,
                source=source.source_text,
                files=build_manifest(source.path),
                actor="dry-run",
            )
            return model, model.current["digest"]
    if wanted.revision is None:
        return model, str(model.current["digest"])
    try:
        return model, str(revision_entry(model, wanted.revision)["digest"])
    except NotFound:
        if wanted.hf_repo is None:
            raise
    # A Hugging Face @REV may be a ref name (``main``): the cache says which commit.
    commit = resolve_source(ref, hf_cache=hf_cache).revision
    return model, str(revision_entry(model, commit)["digest"])


# -- planning ----------------------------------------------------------------------


def plan_materialize(
    ledger: Ledger,
    ws: Workspace,
    model: ModelAsset,
    host: HostLike,
    *,
    runtime: str | None = None,
    verify: bool = True,
    digest: str | None = None,
    connector: Connector | None = None,
) -> MaterializePlan:
    """Admission, then one inventory round on the host, then the per-file plan
    for manifest ``digest`` of ``model`` (default: its current one).

    Raises :class:`AdmissionRefused` (exit 13) naming every reason code,
    ``UnknownRuntimeError`` (exit 3), :class:`MaterializeError` (11: the host
    could not be reached or its inventory failed), ``ConnectorError``.
    ``connector`` (open or not) is used instead of a new one and left open.
    Appends nothing; ``ledger`` is read only.
    """
    del ledger  # read through ``model`` and ``host``; kept for a stable signature
    digest = digest or model.current["digest"]
    files = _checked_manifest(model, digest)
    total = sum(f.size for f in files)
    root = resolve_root(host, ws.root)
    admission, reasons = _admit_recorded(ws, host, root, total, runtime)
    if reasons:
        raise AdmissionRefused(model.name, host.name, _verdict(admission, reasons))
    models = posixpath.join(root, "models")
    with _connected(host, ws, connector) as conn:
        report = _inventory(conn, host.name, models, digest, files, verify)
    plans = tuple(
        _file_plan(f, entry, verify) for f, entry in zip(files, report["files"], strict=True)
    )
    to_send = sum(p.to_send for p in plans)
    admission["bytes_to_send"] = to_send
    admission["host_free_bytes"] = int(report["free_bytes"])
    reasons += _disk_reasons(admission, to_send, root)
    verdict = _verdict(admission, reasons)
    if reasons:
        raise AdmissionRefused(model.name, host.name, verdict)
    return MaterializePlan(
        model=model.name,
        digest=digest,
        host=host.name,
        root=root,
        source=_source_of(model, digest),
        verify=verify,
        admission=verdict,
        files=plans,
        complete_dir=bool(report["complete_dir"]),
    )


def _checked_manifest(model: ModelAsset, digest: str) -> list[ModelFile]:
    """The recorded manifest, its names checked again as data (principle 10):
    they become a directory name and paths on the host."""
    problem = name_problem("model", model.name)
    if problem is not None:
        raise MaterializeError(f"cannot materialize: {problem}", exit_code=3)
    files = sorted(model.manifest(digest), key=lambda f: f.path)
    for f in files:
        problem = transfer.path_problem(f.path)
        if problem is None and (f.size < 0 or len(f.sha256) != 64):
            problem = f"{f.path}: size or sha256 malformed"
        if problem is not None:
            raise MaterializeError(f"model {model.name}: manifest refused: {problem}", exit_code=3)
    return files


def _admit_recorded(
    ws: Workspace, host: HostLike, root: str, model_bytes: int, runtime_name: str | None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The checks that need no connection, from the host's recorded facts."""
    facts = host.facts
    reasons: list[tuple[str, str]] = []
    admission: dict[str, Any] = {
        "runtime": runtime_name,
        "model_bytes": model_bytes,
        "facts_digest": getattr(host, "facts_digest", None),
        "largest_gpu_bytes": None,
        "disk_path": None,
        "recorded_free_bytes": None,
    }
    if facts is not None:
        gpus = list(facts.get("gpus") or [])
        if gpus:
            admission["largest_gpu_bytes"] = max(int(g.get("memory_total_bytes", 0)) for g in gpus)
        disk = _root_disk(facts, root)
        if disk is not None:
            admission["disk_path"] = str(disk.get("path"))
            admission["recorded_free_bytes"] = int(disk.get("free_bytes", 0))
    if runtime_name is None:
        return admission, reasons
    runtime = resolve_runtime(runtime_name, _declared_runtimes(ws))
    admission["requirements"] = runtime.requirements()
    if facts is None:
        reasons.append(
            (
                "no-inventory",
                f"host {host.name} has no recorded hardware; run 'chassis host inventory "
                f"{host.name}' first",
            )
        )
        return admission, reasons
    reasons += evaluate(runtime, facts).reasons
    largest = admission["largest_gpu_bytes"]
    if runtime.gpu == "nvidia" and largest is not None and model_bytes > largest:
        detail = (
            f"the model's {human_size(model_bytes)} exceed the largest GPU's "
            f"{largest / GIB:.1f} GiB of memory"
        )
        reasons = _merged(reasons, "insufficient-vram", detail)
    return admission, reasons


def _declared_runtimes(ws: Workspace) -> dict[str, Any]:
    if not ws.stack_file.exists():
        return {}
    from chassis.stack.spec import load_stack

    return dict(load_stack(ws.stack_file).runtimes)


def _root_disk(facts: dict[str, Any], root: str) -> dict[str, Any] | None:
    """The recorded disk entry for ``root``: its own, else the deepest that holds it."""
    best: dict[str, Any] | None = None
    for disk in facts.get("disks") or []:
        path = str(disk.get("path", ""))
        inside = path == root or root.startswith(path.rstrip("/") + "/")
        if inside and (best is None or len(path) > len(str(best.get("path", "")))):
            best = disk
    return best


def _disk_reasons(admission: dict[str, Any], to_send: int, root: str) -> list[tuple[str, str]]:
    details = []
    recorded = admission["recorded_free_bytes"]
    if recorded is not None and to_send > recorded:
        details.append(
            f"{human_size(to_send)} to send, the disk holding {root} had "
            f"{human_size(recorded)} free when the host was inventoried"
        )
    now = admission["host_free_bytes"]
    if to_send > now:
        details.append(f"{human_size(to_send)} to send, {human_size(now)} free on the host now")
    return [("insufficient-disk", "; ".join(details))] if details else []


def _merged(reasons: list[tuple[str, str]], code: str, detail: str) -> list[tuple[str, str]]:
    for i, (have, text) in enumerate(reasons):
        if have == code:
            return [*reasons[:i], (code, f"{text}; {detail}"), *reasons[i + 1 :]]
    return [*reasons, (code, detail)]


def _verdict(admission: dict[str, Any], reasons: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        **admission,
        "admitted": not reasons,
        "reasons": [{"code": code, "detail": detail} for code, detail in reasons],
    }


def _file_plan(f: ModelFile, entry: dict[str, Any], verify: bool) -> FilePlan:
    if entry.get("path") != f.path:
        raise MaterializeError(f"the host's inventory does not follow the manifest at {f.path}")
    where = entry.get("at")
    if where is not None:
        checked = "sha256 verified on the host" if verify else "name and size checked"
        place = "" if where == "sha256" else " (in the partial directory)"
        return FilePlan(f.path, f.size, f.sha256, "skip", reason=f"present{place}, {checked}")
    problem = entry.get("problem")
    part = int(entry.get("part") or 0)
    if part > 0:
        return FilePlan(
            f.path,
            f.size,
            f.sha256,
            "resume",
            offset=part,
            reason=f"a partial of {part} bytes is on the host",
            repair=problem,
        )
    reason = f"the host's copy is refused: {problem}" if problem else "not on the host"
    return FilePlan(f.path, f.size, f.sha256, "send", reason=reason, repair=problem)


def _inventory(
    conn: Connector,
    host: str,
    models: str,
    digest: str,
    files: list[ModelFile],
    verify: bool,
) -> dict[str, Any]:
    rows = [(f.path, f.size, f.sha256) for f in files]
    command, stdin = transfer.inventory_command(models, digest, rows, verify=verify)
    timeout = COMMAND_TIMEOUT_S + (sum(f.size for f in files) / VERIFY_RATE if verify else 0)
    result = conn.run(command, stdin=stdin, timeout=timeout, display=f"model inventory {models}")
    report = _report(result.stdout, result.stderr, result.exit_code, host, "the model inventory")
    if not report["ok"]:
        raise MaterializeError(f"host {host}: the model inventory failed: {report.get('problem')}")
    if not isinstance(report.get("files"), list) or len(report["files"]) != len(files):
        raise MaterializeError(f"host {host}: the model inventory answered for other files")
    return report


def _report(stdout: str, stderr: str, exit_code: int, host: str, what: str) -> dict[str, Any]:
    report = transfer.host_report(stdout)
    if report is not None:
        return report
    cause = (stderr.strip().splitlines() or ["no output"])[-1]
    if exit_code == 127:
        cause = "python3 is not installed there; materializing needs it"
    raise MaterializeError(f"host {host}: {what} did not run (exit {exit_code}): {cause}")


def host_connector(host: HostLike, ws: Workspace) -> Connector:
    """The host's connector, not connected yet (it connects on first use):
    pass it to :func:`plan_materialize` and :func:`materialize` to use one
    connection for both, and close it after."""
    from chassis.connect import connector_for, connector_from_settings, recorded_pin

    if isinstance(host, Host):
        return connector_for(host, ws)
    pin = recorded_pin(ws, host.name)
    return connector_from_settings(host.name, host.settings, ws, pin=pin)


@contextlib.contextmanager
def _connected(host: HostLike, ws: Workspace, connector: Connector | None) -> Iterator[Connector]:
    if connector is not None:
        connector.connect()
        yield connector
        return
    with host_connector(host, ws) as conn:
        yield conn


def _source_of(model: ModelAsset, digest: str) -> str:
    for revision in reversed(model.revisions):
        if revision["digest"] == digest:
            return str(revision["source"])
    return str(model.current["source"])


def _local_files(
    plan: MaterializePlan, files: list[FilePlan], hf_cache: Path | None
) -> dict[str, Path]:
    """Where each file to send is on this machine; checked before anything is
    recorded: present, and of its recorded size. A Hugging Face source
    (``model:hf:ORG/NAME@COMMIT``) is read from the local cache."""
    if not files:
        return {}
    if plan.source.startswith("model:hf:"):
        from chassis.models.registry import resolve_source

        source = resolve_source(plan.source, hf_cache=hf_cache).path
    else:
        source = Path(plan.source)
    if not source.exists():
        raise ModelSourceMissing(
            f"model {plan.model}: its recorded source {plan.source} is not on this machine"
        )
    single = source.is_file()
    if single and len(plan.files) != 1:
        raise ModelSourceMissing(f"model {plan.model}: source {plan.source} is a single file")
    found: dict[str, Path] = {}
    for f in files:
        path = source if single else source.joinpath(*f.path.split("/"))
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ModelSourceMissing(
                f"model {plan.model}: {f.path} is missing from its source {plan.source}"
            ) from None
        if size != f.size:
            raise MaterializeError(
                f"model {plan.model}: {path} is {size} bytes, not the {f.size} its manifest "
                "records (the source changed since it was recorded)",
                exit_code=EXIT_VERIFICATION,
            )
        found[f.path] = path
    return found


# -- materializing -----------------------------------------------------------------


class _Recorder:
    """Appends this materialization's events on the model aggregate."""

    def __init__(self, ledger: Ledger, model: ModelAsset, plan: MaterializePlan) -> None:
        if ledger.signer is None:
            raise MaterializeError("materializing records events: it needs a signing key", 5)
        self.ledger = ledger
        self.actor = ledger.signer.keyid
        self.model_id = model.id
        self.plan = plan
        self.pending: list[dict[str, Any]] = []

    def started(self) -> None:
        def record(m: ModelAsset) -> None:
            m.trigger(
                ModelAsset.MaterializeStarted,
                keyid=self.actor,
                host=self.plan.host,
                manifest_digest=self.plan.digest,
                plan={**self.plan.summary(), "plan_digest": self.plan.plan_digest},
            )

        self.ledger.update(ModelAsset, self.model_id, record)

    def placed(self, outcome: dict[str, Any]) -> None:
        self.pending.append(outcome)

    def flush(self, finished: dict[str, Any] | None = None, *, at_least: int = 1) -> None:
        """Append the pending outcomes (``BATCH`` per event), once there are
        ``at_least``, and ``Materialized`` when ``finished`` — one transaction."""
        if len(self.pending) < at_least and finished is None:
            return
        pending, self.pending = self.pending, []

        def record(m: ModelAsset) -> None:
            for start in range(0, len(pending), BATCH):
                m.trigger(
                    ModelAsset.FilesPlaced,
                    keyid=self.actor,
                    host=self.plan.host,
                    manifest_digest=self.plan.digest,
                    outcomes=pending[start : start + BATCH],
                )
            if finished is not None:
                m.trigger(
                    ModelAsset.Materialized,
                    keyid=self.actor,
                    host=self.plan.host,
                    manifest_digest=self.plan.digest,
                    **finished,
                )

        self.ledger.update(ModelAsset, self.model_id, record)


def materialize(
    ledger: Ledger,
    ws: Workspace,
    model: ModelAsset,
    host: HostLike,
    plan: MaterializePlan,
    progress: Progress | None = None,
    *,
    connector: Connector | None = None,
    hf_cache: Path | None = None,
) -> MaterializeResult:
    """Carry ``plan`` out (see the module docstring); the result, or
    :class:`MaterializeError`, one line with its exit status: 8 bytes still
    wrong after a re-send, or the source changed; 11 the host failed or the
    connection broke (run again to resume); 10 the source is not here; any
    other typed error's own (a connector's, the ledger's), its message
    prefixed with how far the run got. Every failure after the intent is
    recorded appends ``Materialized(ok=False)`` first. ``connector`` as for
    :func:`plan_materialize`; ``hf_cache`` where a Hugging Face source is read
    (default: the usual cache)."""
    note = progress or (lambda _line: None)
    if plan.host != host.name or plan.model != model.name or plan.digest not in model.files:
        raise MaterializeError("the plan is for another model or host", exit_code=3)
    local = _local_files(plan, [f for f in plan.files if f.action != "skip"], hf_cache)
    recorder = _Recorder(ledger, model, plan)
    result = MaterializeResult(
        model=plan.model,
        digest=plan.digest,
        host=plan.host,
        path=posixpath.join(plan.models_dir, "sha256", plan.digest),
        link=posixpath.join(plan.models_dir, "by-name", plan.model),
    )
    started = time.monotonic()
    recorder.started()

    def placed(outcome: dict[str, Any]) -> None:
        result.outcomes.append(outcome)
        result.bytes_sent += outcome["bytes_sent"]
        recorder.placed(outcome)

    try:
        skipped = plan.of("skip")
        for f in skipped:
            placed(_outcome(f, "skipped", 0, f.sha256, f.reason))
        if skipped:
            note(f"  skipped {len(skipped)} file(s) already on {plan.host}")
        with _connected(host, ws, connector) as conn:
            sender = _Sender(conn, plan, note, local)
            groups = list(_groups([f for f in plan.files if f.action != "skip"]))
            how: str | None = None
            for number, group in enumerate(groups, start=1):
                # The last receiver also places the model when every file arrived whole.
                how = sender.send(group, placed, place=number == len(groups))
                recorder.flush(at_least=BATCH)
            if how is None:
                how = _place(conn, plan)
    except BaseException as e:
        detail = _failure(e, plan, len(result.outcomes))
        try:
            recorder.flush(
                {
                    "ok": False,
                    "bytes_sent": result.bytes_sent,
                    "files_sent": sum(o["outcome"] in SENT for o in result.outcomes),
                    "files_skipped": sum(o["outcome"] == "skipped" for o in result.outcomes),
                    "detail": detail,
                }
            )
        except Exception as recording:  # keep the original error; say both
            detail += f" (and recording the failure failed: {one_line(str(recording))})"
        code = getattr(e, "exit_code", None)
        if isinstance(e, Exception) and isinstance(code, int):
            raise MaterializeError(detail, exit_code=code) from e
        raise
    counts = {o["outcome"]: 0 for o in result.outcomes}
    for o in result.outcomes:
        counts[o["outcome"]] += 1
    result.files_sent = counts.get("sent", 0)
    result.files_resumed = counts.get("resumed", 0)
    result.files_resent = counts.get("resent", 0)
    result.files_skipped = counts.get("skipped", 0)
    result.placed = how
    result.seconds = time.monotonic() - started
    recorder.flush(
        {
            "ok": True,
            "bytes_sent": result.bytes_sent,
            "files_sent": result.files_transferred,
            "files_skipped": result.files_skipped,
            "detail": f"placed in models/sha256/{plan.digest} ({how}); "
            f"models/by-name/{plan.model} points at it",
        }
    )
    return result


def _failure(e: BaseException, plan: MaterializePlan, done: int) -> str:
    where = (
        f"materializing {plan.model} on {plan.host} stopped after {done} of "
        f"{len(plan.files)} file(s)"
    )
    if isinstance(e, KeyboardInterrupt):
        return f"{where}: interrupted; run it again to resume"
    if isinstance(e, MaterializeError):
        return f"{where}: {e}"
    text = one_line(str(e) or type(e).__name__)
    if isinstance(e, ConnectorError):
        return f"{where}: {text}; run it again to resume"
    return f"{where}: {type(e).__name__}: {text}"


def _outcome(f: FilePlan, outcome: str, sent: int, sha256: str, detail: str) -> dict[str, Any]:
    return {
        "path": f.path,
        "outcome": outcome,
        "bytes_sent": sent,
        "sha256": sha256,
        "detail": detail,
    }


def _groups(files: list[FilePlan]) -> Iterator[list[FilePlan]]:
    """Files to send, in order, grouped into one receiver each: up to
    ``GROUP_FILES`` files and ``GROUP_BYTES`` to send (a larger file alone)."""
    group: list[FilePlan] = []
    size = 0
    for f in files:
        if group and (len(group) >= GROUP_FILES or size + f.to_send > GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(f)
        size += f.to_send
    if group:
        yield group


class _Sender:
    """Streams groups of files to the host's receiver, one command per group."""

    def __init__(
        self, conn: Connector, plan: MaterializePlan, note: Progress, local: dict[str, Path]
    ) -> None:
        self.conn = conn
        self.plan = plan
        self.note = note
        self.local = local

    def send(
        self, group: list[FilePlan], placed: Callable[[dict[str, Any]], None], *, place: bool
    ) -> str | None:
        """Send ``group``; pass each file's outcome to ``placed``; a file the
        host refused (sha256) is sent once more from zero; raise at the end
        for a file that still failed. With ``place`` the receiver places the
        model when every file arrived whole: how (:func:`_place`), else None."""
        reports, sent, placement = self._stream([(f, f.offset) for f in group], place=place)
        again: list[tuple[FilePlan, str]] = []
        failure: MaterializeError | None = None
        for f in group:
            report = reports[f.path]
            if report["ok"]:
                placed(self._outcome(f, report, sent[f.path]))
            elif report.get("mismatch") or report.get("stale"):
                again.append((f, str(report["problem"])))
            else:
                problem = str(report["problem"])
                placed(_outcome(f, "failed", sent[f.path], "", problem))
                failure = failure or MaterializeError(
                    f"host {self.plan.host}: receiving {f.path}: {problem}"
                )
        if again:
            for f, problem in again:
                self.note(f"  {f.path}: {problem}; sending it again from zero")
            retried = [(f, 0) for f, _ in again]
            reports_again, sent_again, _ = self._stream(retried, place=False)
            for f, first in again:
                report = reports_again[f.path]
                total = sent[f.path] + sent_again[f.path]
                if report["ok"]:
                    detail = f"{first}; sent again from zero"
                    placed(_outcome(f, "resent", total, report["sha256"], detail))
                    continue
                problem = f"still wrong on {self.plan.host} after sending it again: "
                problem += str(report["problem"])
                placed(_outcome(f, "failed", total, report.get("sha256") or "", problem))
                failure = failure or MaterializeError(
                    f"{f.path}: {problem}",
                    exit_code=EXIT_VERIFICATION if report.get("mismatch") else EXIT_UNREACHABLE,
                )
        if failure is not None:
            raise failure
        if again or placement is None:
            return None
        return _placed(placement, self.plan)

    @staticmethod
    def _outcome(f: FilePlan, report: dict[str, Any], sent: int) -> dict[str, Any]:
        if f.repair:
            detail = f"replaced the host's copy ({f.repair})"
            return _outcome(f, "resent", sent, report["sha256"], detail)
        if f.offset:
            detail = f"resumed at byte {f.offset}"
            return _outcome(f, "resumed", sent, report["sha256"], detail)
        return _outcome(f, "sent", sent, report["sha256"], "")

    def _stream(
        self, items: list[tuple[FilePlan, int]], *, place: bool
    ) -> tuple[dict[str, dict[str, Any]], dict[str, int], dict[str, Any] | None]:
        """One receiver for ``items`` (file, offset): its report and the bytes
        sent, by path, and its placement report (``place``, every file whole)."""
        plan = self.plan
        rows = [(f.path, f.size, f.sha256, offset) for f, offset in items]
        manifest = [(f.path, f.size, f.sha256) for f in plan.files]
        command, prefix = transfer.receive_command(
            plan.models_dir, plan.digest, rows, place=(plan.model, manifest) if place else None
        )
        sent = {f.path: 0 for f, _ in items}

        def chunks() -> Iterator[bytes]:
            yield prefix
            for f, offset in items:
                started = time.monotonic()
                with self.local[f.path].open("rb") as fh:
                    fh.seek(offset)
                    remaining = f.size - offset
                    while remaining > 0:
                        data = fh.read(min(CHUNK, remaining))
                        if not data:
                            raise MaterializeError(
                                f"{f.path}: the local file ended {remaining} bytes early "
                                "(the source changed since it was recorded)",
                                exit_code=EXIT_VERIFICATION,
                            )
                        remaining -= len(data)
                        sent[f.path] += len(data)
                        yield data
                self._progress(f, offset, sent[f.path], time.monotonic() - started)

        first = items[0][0].path
        shown = f"receive {first}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")
        result = self.conn.run_streaming(command, chunks(), timeout=STREAM_TIMEOUT_S, display=shown)
        report = _report(result.stdout, result.stderr, result.exit_code, plan.host, shown)
        files = report.get("files")
        if not report["ok"] or not isinstance(files, list):
            raise MaterializeError(f"host {plan.host}: {shown}: {report.get('problem')}")
        by_path = {str(r.get("path")): r for r in files if isinstance(r, dict)}
        if sorted(by_path) != sorted(sent):
            raise MaterializeError(f"host {plan.host}: {shown}: answered for other files")
        placement = report.get("place")
        return by_path, sent, placement if isinstance(placement, dict) else None

    def _progress(self, f: FilePlan, offset: int, sent: int, seconds: float) -> None:
        verb = f"resumed at {human_size(offset)}, sent" if offset else "sent"
        rate = f" ({sent / seconds / 1e6:.1f} MB/s)" if sent >= 10**6 and seconds > 0 else ""
        self.note(f"  {f.path}: {verb} {human_size(sent)} in {seconds:.2f} s{rate}")


def _place(conn: Connector, plan: MaterializePlan) -> str:
    rows = [(f.path, f.size, f.sha256) for f in plan.files]
    command, stdin = transfer.place_command(plan.models_dir, plan.digest, plan.model, rows)
    result = conn.run(
        command, stdin=stdin, timeout=COMMAND_TIMEOUT_S, display=f"place model {plan.model}"
    )
    report = _report(result.stdout, result.stderr, result.exit_code, plan.host, "placing the model")
    return _placed(report, plan)


def _placed(report: dict[str, Any], plan: MaterializePlan) -> str:
    """How the model was placed, from the host's report; one line if it was not."""
    if not report["ok"]:
        code = EXIT_VERIFICATION if report.get("path") else EXIT_UNREACHABLE
        raise MaterializeError(
            f"host {plan.host}: placing the model failed: {report['problem']}", exit_code=code
        )
    return str(report["placed"])


def human_size(n: int) -> str:
    if n >= 10**9:
        return f"{n / 10**9:.2f} GB"
    if n >= 10**6:
        return f"{n / 10**6:.1f} MB"
    if n >= 10**3:
        return f"{n / 10**3:.1f} kB"
    return f"{n} B"
