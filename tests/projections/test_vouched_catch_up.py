"""Checkpoint-vouched catch-up (issue 17, item 4): the records a verified
checkpoint covers are read on its word, without checking each signature
again, and nothing else changes.

On SQLite and PostgreSQL: a vouched catch-up folds exactly what per-event
verification folds, and an attacker who can write the database but holds no
key is refused exactly as before (same error class, same reason), whether
the planted row sits inside the checkpointed range or after it, whether the
digest field was recomputed or not, and whatever the stored checkpoint says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import projections.fold as fold
from chassis.checkpoints import checkpoint_now
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.canonical import event_digest
from ledger.checks import RecordRejected, VerifyReason, decode_event
from ledger.errors import ChainBreakError
from ledger.hosts import Host, HostSettings
from ledger.installations import Installation
from ledger.keys import KeyPair, generate_keypair
from ledger.mapper import SealingMapper
from ledger.records import parse_record, sealed_state
from ledger.storage import StorageConfig, open_ledger
from ledger.trust import Trust
from ledger.vouched import BODY_AT, TAIL, decode_vouched
from projections.fold import catch_up, open_views, read_documents, rebuild
from projections.hosts import HOSTS
from projections.installations import INSTALLATIONS
from proofs.chain import LedgerVerificationError, verify_ledger
from proofs.vouch import CheckpointVouch, checkpoint_vouched, latest_note
from tests.conftest import Runner
from tests.projections.test_installation_views import run_operation
from tests.rawstore import RawStore, Row


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 2 events: the first page of these small ledgers is full, so a
    catch-up asks for vouching, and page boundaries fall everywhere."""
    monkeypatch.setattr(fold, "PAGE", 2)


def _workspace(path: Path, root: KeyPair) -> Workspace:
    """A bare workspace pinned to ``root`` (what ``checkpoint_now`` needs)."""
    state = path / "ws" / ".chassis"
    state.mkdir(parents=True, exist_ok=True)
    settings = {"name": "test", "root_keyid": root.keyid, "default_key": root.name}
    (state / "workspace.json").write_text(json.dumps(settings))
    return Workspace(path / "ws")


def _history(ledger: Ledger, key: KeyPair) -> None:
    """Installations (deploys, a failure, a broken lease) and hosts
    (registered, facts, reconfigured, removed): every fold path."""
    views = open_views(ledger)
    for name, ops in (("shop", 3), ("blog", 2)):
        for n in range(ops):
            op = {
                "label": f"v{n + 1}",
                "hosts": ["h1", "h2"][: 1 + n % 2],
                "activate": 2,
                "restore": n == 1,
                "ending": ("deployed", "failed", "break")[n % 3],
            }
            run_operation(ledger, key, name, op, views)
    settings = HostSettings(environment="e", connector="local", root="/r")
    for name in ("h1", "h2", "h3"):
        ledger.append(Host.register(name, settings, actor=key.keyid))
    host = ledger.load(Host, Host.id_for("h1"))
    host.record_facts({"cpu_logical": 8}, "ab" * 32, actor=key.keyid)
    host.reconfigure(HostSettings(environment="e", connector="local", root="/r2"), actor=key.keyid)
    ledger.append(host)
    gone = ledger.load(Host, Host.id_for("h3"))
    gone.remove("retired", actor=key.keyid)
    ledger.append(gone)


def _checkpointed(
    ledger: Ledger, root: KeyPair, tmp_path: Path, signer: KeyPair | None = None
) -> int:
    """Sign a checkpoint over everything so far (verifying it first, as
    ``chassis ledger checkpoint`` does); its tree size."""
    return checkpoint_now(ledger, _workspace(tmp_path, root), signer or root).checkpoint.size


def _reader(url: str) -> Ledger:
    """The ledger as a new process opens it: no signer, nothing remembered."""
    return open_ledger(StorageConfig.from_url(url), None)


@pytest.fixture
def reader(ledger_url: str) -> Iterator[Callable[[], Ledger]]:
    opened: list[Ledger] = []

    def make() -> Ledger:
        opened.append(_reader(ledger_url))
        return opened[-1]

    yield make
    for ledger in opened:
        ledger.close()


class Verified:
    """Counts the records verified one by one (their positions)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seqs: list[int] = []
        original = SealingMapper.verified_event

        def counting(mapper: SealingMapper, row: Any, trust: Any = None) -> Any:
            if trust is None:
                self.seqs.append(row[0])
            return original(mapper, row, trust)

        monkeypatch.setattr(SealingMapper, "verified_event", counting)


def _fold(ledger: Ledger, vouched: bool) -> dict[str, list[Any]]:
    store = open_views(ledger)
    vouch = CheckpointVouch(ledger) if vouched else None
    rebuild(ledger, store, INSTALLATIONS, vouch)
    rebuild(ledger, store, HOSTS, vouch)
    return {
        INSTALLATIONS.name: read_documents(store, INSTALLATIONS),
        HOSTS.name: read_documents(store, HOSTS),
    }


def test_vouched_catch_up_folds_what_per_event_verification_folds(
    ledger: Ledger,
    ledger_url: str,
    root_key: KeyPair,
    tmp_path: Path,
    reader: Callable[[], Ledger],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _history(ledger, root_key)
    size = _checkpointed(ledger, root_key, tmp_path)
    after = Installation.open("late", "env", actor=root_key.keyid)  # after the checkpoint
    ledger.append(after)
    per_event = _fold(reader(), vouched=False)
    verified = Verified(monkeypatch)
    vouched = _fold(reader(), vouched=True)
    assert vouched == per_event
    last = max(r.seq for r in RawStore(ledger_url).rows())
    assert verified.seqs == [last], "only the event after the checkpoint is verified one by one"
    assert size == len(RawStore(ledger_url).rows()) - 1


def test_incremental_vouched_catch_up_equals_rebuild(
    ledger: Ledger, root_key: KeyPair, tmp_path: Path, reader: Callable[[], Ledger]
) -> None:
    """Catch up after each operation (checkpointing after each, as every
    command does), then rebuild from scratch: the same documents."""
    views = open_views(ledger)
    workspace = _workspace(tmp_path, root_key)
    for n in range(4):
        op = {
            "label": f"v{n}",
            "hosts": ["h1"],
            "activate": 1,
            "restore": False,
            "ending": "deployed",
        }
        run_operation(ledger, root_key, "shop", op, views)
        checkpoint_now(ledger, workspace, root_key)
        fresh = reader()
        catch_up(fresh, open_views(fresh), INSTALLATIONS, CheckpointVouch(fresh))
    incremental = read_documents(open_views(ledger), INSTALLATIONS)
    assert _fold(reader(), vouched=True)[INSTALLATIONS.name] == incremental


def test_vouched_reads_decode_the_events_full_verification_decodes(
    ledger: Ledger, ledger_url: str, root_key: KeyPair
) -> None:
    _history(ledger, root_key)
    rows = RawStore(ledger_url).rows()
    assert len({r.topic for r in rows}) >= 10
    for row in rows:
        record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
        assert decode_vouched(row.topic, row.state[BODY_AT:-TAIL]) == decode_event(record)


# An attacker who can write the database and holds no key.


def _rows(url: str, prefix: str = "chassis.installation.") -> list[Row]:
    return [r for r in RawStore(url).rows() if r.topic.startswith(prefix)]


def _edit_body(row: Row, edit: Callable[[dict[str, Any]], None], *, rehash: bool) -> bytes:
    """``row`` with its body edited; the digest field recomputed or not, the
    signature left as it was (no key)."""
    record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
    body = json.loads(record.body_bytes)
    edit(body)
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = event_digest(encoded) if rehash else record.digest
    return sealed_state(digest, encoded, record.signature)


def _relabel(body: dict[str, Any]) -> None:
    if "label" in body["payload"]:
        body["payload"]["label"] = "evil"
    else:
        body["payload"]["op_id"] = "evil"


def _refusal(ledger: Ledger, vouched: bool) -> tuple[type[Exception], str]:
    store = open_views(ledger)
    with pytest.raises((RecordRejected, ChainBreakError)) as caught:
        rebuild(ledger, store, INSTALLATIONS, CheckpointVouch(ledger) if vouched else None)
    error = caught.value
    return type(error), getattr(error, "reason", str(error))


@pytest.mark.parametrize("where", ["inside", "after"])
@pytest.mark.parametrize("rehash", [True, False], ids=["digest-recomputed", "digest-kept"])
def test_a_planted_event_is_refused_inside_and_after_the_checkpoint(
    ledger: Ledger,
    ledger_url: str,
    root_key: KeyPair,
    tmp_path: Path,
    reader: Callable[[], Ledger],
    where: str,
    rehash: bool,
) -> None:
    _history(ledger, root_key)
    _checkpointed(ledger, root_key, tmp_path)
    if where == "after":
        op = {"label": "v9", "hosts": ["h1"], "activate": 1, "restore": False}
        run_operation(ledger, root_key, "late", {**op, "ending": "deployed"}, open_views(ledger))
    rows = _rows(ledger_url)
    target = rows[len(rows) // 3] if where == "inside" else rows[-2]
    RawStore(ledger_url).set_state(target.seq, _edit_body(target, _relabel, rehash=rehash))
    expected = (
        (RecordRejected, VerifyReason.BAD_SIGNATURE)
        if rehash
        else (RecordRejected, VerifyReason.DIGEST_MISMATCH)
    )
    assert _refusal(reader(), vouched=False) == expected, "per-event verification, as before"
    assert _refusal(reader(), vouched=True) == expected
    with pytest.raises(LedgerVerificationError):
        verify_ledger(reader().scan())


@pytest.mark.parametrize("column", ["version", "topic"])
def test_a_changed_column_inside_the_checkpoint_is_refused(
    ledger: Ledger,
    ledger_url: str,
    root_key: KeyPair,
    tmp_path: Path,
    reader: Callable[[], Ledger],
    column: str,
) -> None:
    """The digest covers the body, not the columns: they are still checked."""
    _history(ledger, root_key)
    _checkpointed(ledger, root_key, tmp_path)
    rows = _rows(ledger_url)
    target = next(r for r in rows[2:] if r.topic.endswith("step-recorded.v1"))
    store = RawStore(ledger_url)
    if column == "version":
        store.set_version(target.seq, target.version + 1000)
        expected = (RecordRejected, VerifyReason.VERSION_MISMATCH)
    else:
        store.set_topic(target.seq, Installation.HostActivated.TOPIC)
        expected = (RecordRejected, VerifyReason.RECORD_MISMATCH)
    assert _refusal(reader(), vouched=False) == expected
    assert _refusal(reader(), vouched=True) == expected


def test_a_deleted_event_inside_the_checkpoint_breaks_the_chain_as_before(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, tmp_path: Path, reader: Callable[[], Ledger]
) -> None:
    _history(ledger, root_key)
    _checkpointed(ledger, root_key, tmp_path)
    rows = _rows(ledger_url)
    RawStore(ledger_url).delete(rows[3].seq)
    before = _refusal(reader(), vouched=False)
    assert before[0] is ChainBreakError
    assert _refusal(reader(), vouched=True) == before


def test_a_checkpoint_that_does_not_hold_vouches_for_nothing(
    ledger: Ledger,
    ledger_url: str,
    root_key: KeyPair,
    tmp_path: Path,
    isolation: Path,
    reader: Callable[[], Ledger],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A note over a forged root signed by an untrusted key, one by a trusted
    key without role ``checkpoint``, and one by a checkpoint key revoked
    since: none is taken; every record is verified one by one."""
    from proofs.note import Checkpoint, origin_for, sign_checkpoint

    operator = _trust(ledger, root_key, isolation, "operator", ["operator"])
    _history(ledger, root_key)
    size = _checkpointed(ledger, root_key, tmp_path)
    assert checkpoint_vouched(reader()) is not None
    origin = origin_for("test")
    latest = _latest(ledger)
    original = latest_note(ledger)
    assert original is not None
    mallory = generate_keypair(isolation, "mallory")
    forged = sign_checkpoint(Checkpoint(origin, size, b"\x01" * 32), origin, mallory)
    _put_note(ledger, latest, forged)
    assert checkpoint_vouched(reader()) is None, "an untrusted key"

    honest_root = sign_checkpoint(Checkpoint(origin, size, latest[1]), origin, operator)
    _put_note(ledger, latest, honest_root)
    assert checkpoint_vouched(reader()) is None, "a key without role checkpoint"

    _put_note(ledger, latest, original)
    cp = _trust(ledger, root_key, isolation, "cp", ["checkpoint"])
    later = _checkpointed(ledger, root_key, tmp_path, signer=cp)
    assert later > size and checkpoint_vouched(reader()) is not None
    ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.revoke_key(actor=root_key.keyid, keyid=cp.keyid, reason="lost"),
    )
    assert checkpoint_vouched(reader()) is None, "signed by a key revoked since"
    verified = Verified(monkeypatch)
    _fold(reader(), vouched=True)
    assert len(verified.seqs) == len(_rows(ledger_url)) + len(_rows(ledger_url, "chassis.host."))


def test_a_damaged_signature_inside_the_checkpoint_changes_nothing_read(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, tmp_path: Path, reader: Callable[[], Ledger]
) -> None:
    """The checkpoint covers each record's digest, which covers its body, not
    the bytes of its signature: a record whose signature alone was damaged
    after the checkpoint was signed is read as the body the checkpoint's
    signer verified (what ``ledger verify --fast`` accepts too), while full
    verification reports the damaged signature."""
    _history(ledger, root_key)
    _checkpointed(ledger, root_key, tmp_path)
    honest = _fold(reader(), vouched=True)
    target = _rows(ledger_url)[4]
    zeroed = target.state[:-TAIL] + b',"sig":"' + b"A" * 86 + b'=="}'
    RawStore(ledger_url).set_state(target.seq, zeroed)
    assert _fold(reader(), vouched=True) == honest
    with pytest.raises(LedgerVerificationError) as caught:
        verify_ledger(reader().scan())
    assert caught.value.failure.reason is VerifyReason.BAD_SIGNATURE
    assert _refusal(reader(), vouched=False) == (RecordRejected, VerifyReason.BAD_SIGNATURE)


def _trust(ledger: Ledger, root: KeyPair, keys: Path, name: str, roles: list[str]) -> KeyPair:
    key = generate_keypair(keys, name)
    ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.trust_key(actor=root.keyid, name=name, public_key=key.public_key, roles=roles),
    )
    return key


def _latest(ledger: Ledger) -> tuple[int, bytes]:
    from proofs.checkpoint_verify import unverified

    note = latest_note(ledger)
    assert note is not None
    checkpoint = unverified(note)
    return checkpoint.size, checkpoint.root


def _put_note(ledger: Ledger, latest: tuple[int, bytes], note: str) -> None:
    """Replace the stored checkpoint of that size, as direct SQL would."""
    from ledger.tables import SideTables

    with SideTables(ledger).transaction(commit=True) as c:
        c.execute("UPDATE {chassis_checkpoints} SET note = ? WHERE size = ?", (note, latest[0]))


# The commands operators run.


@pytest.fixture
def shop(
    run: Runner, tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, RawStore]:
    """A workspace on each backend with three hosts, each command checkpointed."""
    root = tmp_path / "shop"
    if ledger_url.startswith("postgresql"):
        monkeypatch.setenv("CHASSIS_LEDGER", ledger_url)
        store = RawStore(ledger_url)
    else:
        store = RawStore(f"sqlite:///{root / '.chassis' / 'ledger.db'}")
    run.ok("init", str(root), "--name", "shop")
    monkeypatch.chdir(root)
    for name in ("lab-1", "lab-2", "lab-3"):
        run.ok("host", "add", name, "--connector", "local", "--root", str(root / name))
    run.ok("ledger", "checkpoint")
    return root, store


def _without_vouching(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CheckpointVouch, "__call__", lambda self, position, topics: None)


def test_commands_read_the_same_with_and_without_vouching(
    shop: tuple[Path, RawStore], run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.ok("ledger", "rebuild-views")
    vouched = run.ok("host", "list", "--json").stdout
    _without_vouching(monkeypatch)
    run.ok("ledger", "rebuild-views")
    assert run.ok("host", "list", "--json").stdout == vouched


@pytest.mark.parametrize("rehash", [True, False], ids=["digest-recomputed", "digest-kept"])
def test_commands_refuse_a_planted_host_inside_the_checkpoint(
    shop: tuple[Path, RawStore], run: Runner, monkeypatch: pytest.MonkeyPatch, rehash: bool
) -> None:
    """Exit 8 and the same message as per-event verification gives."""
    _, store = shop
    target = next(r for r in store.rows() if r.topic == Host.Registered.TOPIC)

    def evil_root(body: dict[str, Any]) -> None:
        body["payload"]["settings"]["root"] = "/etc"

    store.set_state(target.seq, _edit_body(target, evil_root, rehash=rehash))
    vouched = run("ledger", "rebuild-views")
    assert vouched.exit_code == 8
    _without_vouching(monkeypatch)
    per_event = run("ledger", "rebuild-views")
    assert (vouched.exit_code, vouched.stderr) == (per_event.exit_code, per_event.stderr)
    reason = "bad-signature" if rehash else "digest-mismatch"
    assert reason in vouched.stderr


def test_rebuild_views_reads_checkpointed_events_without_their_signatures(
    shop: tuple[Path, RawStore], run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, store = shop
    verified = Verified(monkeypatch)
    run.ok("ledger", "rebuild-views")
    hosts = [r.seq for r in store.rows() if r.topic.startswith("chassis.host.")]
    assert len(hosts) == 3 and not set(verified.seqs) & set(hosts)
