"""Pinned SSH host keys are shared through the ledger (issue 13, item 4).

Before, ``host trust-key`` wrote the pin only into the workspace's
``.chassis/known_hosts``: a teammate's workspace on the same ledger refused
every host (unknown host key) until they pinned it again, and if they did so
while an impostor answered, nothing told them the team had pinned another
key. Now the pin is also a signed ``chassis.host.key-pinned.v1`` event on the
``Host`` aggregate: the second workspace connects with it, refuses an
impostor with both fingerprints, follows a ``--replace`` after a reinstall,
and honours no pin that a trusted operator key did not sign.

Two workspaces (alice, bob) share one ledger, a SQLite file outside both or a
PostgreSQL schema; the host is a real sshd whose host keys can be swapped
(``KeyedSSHD``, on the same address and port).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from click.testing import Result

from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import known_hosts_name
from adapters.supervisors.direct import DirectSupervisor
from chassis.sample_app import build_sample_release
from ledger.application import Ledger
from ledger.errors import DomainRuleError, NotAuthorisedError
from ledger.hosts import Host, HostSettings
from ledger.keys import generate_keypair, load_keypair
from ledger.storage import StorageConfig, open_ledger
from tests.cli.test_host_keys import KeyedSSHD, host_line, sshd  # noqa: F401 - the sshd fixture
from tests.conftest import Runner
from tests.sshd import SSHTestHost

KEY_PINNED = "chassis.host.key-pinned.v1"


@dataclass(frozen=True)
class Team:
    """Two workspaces on one ledger: alice's (first, root key) and bob's."""

    alice: Path
    bob: Path
    url: str
    sshd: KeyedSSHD
    run: Runner

    def __call__(self, who: Path, *args: str) -> Result:
        return self.run("--workspace", str(who), *args)

    def ok(self, who: Path, *args: str) -> Result:
        result = self(who, *args)
        assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}{result.stdout}"
        return result

    def inventory(self, who: Path) -> tuple[int, dict[str, object]]:
        result = self(who, "host", "inventory", "e1", "--json")
        (outcome,) = json.loads(result.stdout)
        return result.exit_code, outcome

    def known_lines(self, who: Path) -> list[str]:
        """The lines of ``who``'s known_hosts naming the sshd."""
        name = known_hosts_name(self.sshd.address, self.sshd.port)
        path = who / ".chassis" / "known_hosts"
        text = path.read_text() if path.exists() else ""
        return [line for line in text.splitlines() if line.split(" ")[0] == name]

    def pinned_blobs(self, who: Path) -> list[str]:
        return [line.split()[2] for line in self.known_lines(who)]

    def blob(self, key: str) -> str:
        return self.sshd.keys[key].split()[1]

    def ledger(self) -> Ledger:
        return open_ledger(StorageConfig.from_url(self.url), None)

    def pins(self) -> list[Host.KeyPinned]:
        """Every key-pinned event of host e1, verified, in order."""
        ledger = self.ledger()
        try:
            events = ledger.verified_events(Host.id_for("e1"))
        finally:
            ledger.close()
        return [e for _, e in events if isinstance(e, Host.KeyPinned)]


@pytest.fixture
def team(
    run: Runner,
    tmp_path: Path,
    ledger_url: str,
    ssh_hosts: list[SSHTestHost],
    sshd: KeyedSSHD,  # noqa: F811
) -> Iterator[Team]:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    run.ok("init", str(alice), "--name", "lab", "--ledger", ledger_url)
    run.ok("--workspace", str(alice), "key", "new", "bob", "--roles", "operator")
    joined = run.ok("--key", "bob", "init", str(bob), "--ledger", ledger_url, "--json")
    assert json.loads(joined.stdout)["joined_existing_ledger"] is True
    stack = (
        '[app]\nname = "lab"\n\n'
        '[components.api]\ncommand = "true"\n\n'
        '[profiles.one]\ngroups.a = { components = ["api"] }\n\n'
        "[environments.edge]\nhosts = [\n"
        + host_line("e1", sshd.address, sshd.port, ssh_hosts[0].client_key, tmp_path / "root-e1")
        + "]\n"
    )
    for workspace in (alice, bob):  # one stack file, in the team's repository
        (workspace / "chassis.toml").write_text(stack)
    yield Team(alice, bob, ledger_url, sshd, run)


def test_one_pin_serves_the_team(team: Team) -> None:
    daemon = team.sshd
    daemon.serve("ed25519")
    pinned = json.loads(team.ok(team.alice, "host", "trust-key", "e1", "--yes", "--json").stdout)
    assert (pinned["fingerprint"], pinned["outcome"]) == (daemon.fingerprint("ed25519"), "pinned")
    assert team.known_lines(team.bob) == []

    code, outcome = team.inventory(team.bob)  # bob never ran trust-key
    assert code == 0, outcome
    assert outcome["ok"] is True
    assert team.pinned_blobs(team.bob) == [team.blob("ed25519")]
    shown = json.loads(team.ok(team.bob, "host", "show", "e1", "--json").stdout)
    assert shown["host_key"]["fingerprint"] == daemon.fingerprint("ed25519")
    assert shown["host_key"]["address"] == daemon.address
    assert daemon.fingerprint("ed25519") in team.ok(team.bob, "host", "show", "e1").stdout

    (event,) = team.pins()
    assert (event.key_type, event.public_key, event.fingerprint, event.replaces) == (
        "ssh-ed25519",
        team.blob("ed25519"),
        daemon.fingerprint("ed25519"),
        None,
    )
    assert (event.address, event.port) == (daemon.address, daemon.port)
    log = json.loads(team.ok(team.bob, "ledger", "log", "--json").stdout)
    assert [e["topic"] for e in log].count(KEY_PINNED) == 1
    team.ok(team.bob, "ledger", "verify")

    again = json.loads(team.ok(team.bob, "host", "trust-key", "e1", "--yes", "--json").stdout)
    assert again["outcome"] == "already-pinned" and len(team.pins()) == 1

    doctor = json.loads(team(team.bob, "doctor", "--json").stdout)
    assert {c["name"]: c["status"] for c in doctor}["host e1: reachable"] == "pass"


def test_an_impostor_is_refused_by_a_workspace_that_never_pinned(team: Team) -> None:
    daemon = team.sshd
    daemon.serve("ed25519")
    team.ok(team.alice, "host", "trust-key", "e1", "--yes")
    daemon.serve("impostor-ed25519")  # same address and port, another key

    code, outcome = team.inventory(team.bob)
    assert code == 11
    error = str(outcome["error"])
    assert "host key changed" in error
    assert daemon.fingerprint("impostor-ed25519") in error
    assert daemon.fingerprint("ed25519") in error

    refused = team(team.bob, "host", "trust-key", "e1", "--yes")
    assert refused.exit_code == 11, "bob pinned over the team's pin without --replace"
    assert daemon.fingerprint("impostor-ed25519") in refused.stderr
    assert daemon.fingerprint("ed25519") in refused.stderr and "--replace" in refused.stderr
    assert len(team.pins()) == 1
    assert team.pinned_blobs(team.bob) == [team.blob("ed25519")]
    assert team.inventory(team.alice)[0] == 11


def test_a_replaced_pin_is_followed_by_the_team(team: Team) -> None:
    daemon = team.sshd
    daemon.serve("ed25519")
    team.ok(team.alice, "host", "trust-key", "e1", "--yes")
    assert team.inventory(team.bob)[0] == 0
    assert team.pinned_blobs(team.bob) == [team.blob("ed25519")]
    team.ok(team.bob, "host", "list")  # the hosts view folds the pin (and keeps its state)

    daemon.serve("ecdsa")  # reinstalled: a new key, of another type
    assert team.inventory(team.bob)[0] == 11
    assert team(team.alice, "host", "trust-key", "e1", "--yes").exit_code == 11
    replaced = json.loads(
        team.ok(team.alice, "host", "trust-key", "e1", "--yes", "--replace", "--json").stdout
    )
    assert replaced["outcome"] == "replaced"
    assert replaced["previous"] == f"ssh-ed25519 {daemon.fingerprint('ed25519')}"

    code, outcome = team.inventory(team.bob)  # bob does nothing
    assert code == 0, outcome
    assert team.pinned_blobs(team.bob) == [team.blob("ecdsa")]
    first, second = team.pins()
    assert (second.key_type, second.fingerprint, second.replaces) == (
        "ecdsa-sha2-nistp256",
        daemon.fingerprint("ecdsa"),
        first.fingerprint,
    )
    team.ok(team.bob, "host", "list")
    team.ok(team.bob, "ledger", "rebuild-views")
    team.ok(team.bob, "ledger", "verify")


def test_a_teammate_deploys_with_the_teams_pins(team: Team, tmp_path: Path) -> None:
    """deploy reaches its hosts (probe, pre-flight, executor) with the ledger's
    pin, also after the host was re-pinned by someone else."""
    daemon = team.sshd
    daemon.serve("ed25519")
    stack = team.bob / "chassis.toml"
    stack.write_text(
        stack.read_text() + '\n[components.worker]\ncommand = "python3 app/worker.py"\n'
        'health = { type = "command", command = "test -f ../../run/worker.ready" }\n\n'
        '[profiles.jobs]\ngroups.jobs = { components = ["worker"] }\n'
    )
    deploy = ("deploy", "lab", "--env", "edge", "--profile", "jobs", "--release")
    for version in ("v1", "v2"):
        bundle, _ = build_sample_release(tmp_path / "dist", version)
        team.ok(team.bob, "release", "add", version, "--artifact", str(bundle))
    team.ok(team.alice, "host", "trust-key", "e1", "--yes")
    try:
        team.ok(team.bob, *deploy, "v1")  # bob has no known_hosts at all
        daemon.serve("ecdsa")  # reinstalled; alice re-pins it
        team.ok(team.alice, "host", "trust-key", "e1", "--yes", "--replace")
        assert team.pinned_blobs(team.bob) == [team.blob("ed25519")]
        team.ok(team.bob, *deploy, "v2")
        assert team.pinned_blobs(team.bob) == [team.blob("ecdsa")]
    finally:
        DirectSupervisor(LocalConnector("e1"), str(tmp_path / "root-e1")).stop("worker")


def test_a_workspace_pin_from_before_is_recorded_for_the_team(team: Team) -> None:
    """A workspace pinned before pins were shared: trust-key records its pin."""
    daemon = team.sshd
    daemon.serve("ed25519")
    name = known_hosts_name(daemon.address, daemon.port)
    (team.alice / ".chassis" / "known_hosts").write_text(f"{name} {daemon.keys['ed25519']}\n")
    assert team.inventory(team.bob)[0] == 11  # nothing in the ledger yet
    again = json.loads(team.ok(team.alice, "host", "trust-key", "e1", "--yes", "--json").stdout)
    assert again["outcome"] == "already-pinned"
    assert [e.fingerprint for e in team.pins()] == [daemon.fingerprint("ed25519")]
    assert team.inventory(team.bob)[0] == 0


def test_a_pin_moved_with_the_host_no_longer_applies(team: Team) -> None:
    """A pin is for an address and port: a host reconfigured elsewhere has none."""
    daemon = team.sshd
    daemon.serve("ed25519")
    team.ok(team.alice, "host", "trust-key", "e1", "--yes")
    for workspace in (team.alice, team.bob):  # the host is declared at 127.0.0.1 now
        stack = workspace / "chassis.toml"
        stack.write_text(stack.read_text().replace(f'"{daemon.address}"', '"127.0.0.1"'))
    shown = json.loads(team.ok(team.bob, "host", "show", "e1", "--json").stdout)
    assert shown["host_key"] is None
    assert "none for 127.0.0.1" in team.ok(team.bob, "host", "show", "e1").stdout
    assert team.inventory(team.bob)[0] == 11  # nothing answers there
    known = team.bob / ".chassis" / "known_hosts"
    assert team.blob("ed25519") not in (known.read_text() if known.exists() else "")


@pytest.mark.parametrize("signer", ["untrusted", "approver"])
def test_a_pin_not_signed_by_a_trusted_operator_is_not_honoured(
    team: Team, isolation: Path, signer: str
) -> None:
    daemon = team.sshd
    daemon.serve("ed25519")
    team.ok(team.alice, "host", "trust-key", "e1", "--yes")
    daemon.serve("impostor-ed25519")
    if signer == "approver":
        team.ok(team.alice, "key", "new", "mallory", "--roles", "approver")
        mallory = load_keypair(isolation / "mallory.key")
    else:
        mallory = generate_keypair(isolation / "elsewhere", "mallory")
    impostor = daemon.keys["impostor-ed25519"].split()

    def pin_impostor(host: Host) -> None:
        host.pin_key(
            key_type=impostor[0],
            public_key=impostor[1],
            fingerprint=daemon.fingerprint("impostor-ed25519"),
            replaces=daemon.fingerprint("ed25519"),
            actor=mallory.keyid,
        )

    ledger = open_ledger(StorageConfig.from_url(team.url), mallory)
    try:
        with pytest.raises(NotAuthorisedError):  # the ledger refuses to append it
            ledger.update(Host, Host.id_for("e1"), pin_impostor, retry=False)
        # An attacker who can write the database but holds no operator key
        # stores it anyway (save() seals and signs without asking trust).
        host = ledger.load(Host, Host.id_for("e1"))
        pin_impostor(host)
        ledger.save(host)
    finally:
        ledger.close()

    result = team(team.bob, "host", "inventory", "e1", "--json")
    assert result.exit_code == 8, result.output  # refused on read, nothing acted on
    assert "key-pinned" in result.stderr
    assert team.blob("impostor-ed25519") not in "".join(team.pinned_blobs(team.bob))
    assert team(team.bob, "host", "trust-key", "e1", "--yes").exit_code == 8
    assert team(team.bob, "ledger", "verify").exit_code == 8


def test_a_pin_is_checked_as_data_before_it_is_recorded() -> None:
    """Principle 10: what ends up in a known_hosts line is one well-formed key."""
    settings = HostSettings(environment="edge", connector="ssh", root="/srv", address="10.0.0.5")
    host = Host.register("e1", settings, actor="a" * 64)
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    good = base64.b64encode(blob).decode()
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    for key_type, public_key, fp, problem in (
        ("ssh-ed25519", good + "\n[10.0.0.6]:22 ssh-ed25519 " + good, fingerprint, "not base64"),
        ("ssh-ed25519 x", good, fingerprint, "not an SSH key type"),
        ("ecdsa-sha2-nistp256", good, fingerprint, "not a ecdsa-sha2-nistp256 key"),
        ("ssh-ed25519", good, "SHA256:" + "A" * 43, "is not the public key's"),
    ):
        with pytest.raises(DomainRuleError, match=problem):
            host.pin_key(
                key_type=key_type, public_key=public_key, fingerprint=fp, replaces=None, actor="a"
            )
    assert host.key_pin() is None
    assert host.pin_key(
        key_type="ssh-ed25519",
        public_key=good,
        fingerprint=fingerprint,
        replaces=None,
        actor="a" * 64,
    )
    pin = host.key_pin()
    assert pin is not None and (pin.address, pin.port) == ("10.0.0.5", 22)
    assert not host.pin_key(  # the same key again appends nothing
        key_type="ssh-ed25519",
        public_key=good,
        fingerprint=fingerprint,
        replaces=None,
        actor="a" * 64,
    )
    host.reconfigure(msgspec.structs.replace(settings, port=2222), actor="a" * 64)
    assert host.key_pin() is None
