"""A host has one pinned SSH key, whatever its type (issue 11, item 3).

The reproduction: with ed25519 pinned, an impostor offering ECDSA was
pinned by ``host trust-key --yes`` (pins were kept per key type) and
``host inventory`` then talked to it. Here a real sshd is restarted on the
same address and port with other host keys, and every change of key or of
key type is refused, on connect and by ``trust-key``, with both
fingerprints, until ``--replace``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.connectors.ssh import SSHConnector, known_hosts_name
from adapters.errors import HostKeyMismatch
from chassis.connect import pin_known_host, pinned_keys
from tests.conftest import Runner
from tests.sshd import (
    SSHD_CONFIG,
    SSHTestHost,
    free_port,
    openssh_fingerprint,
    require_sshd,
    write_ed25519_key,
)


def write_ecdsa_key(path: Path, comment: str) -> str:
    """An OpenSSH ECDSA P-256 private key (0600) and ``.pub``; return the public line."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode("ascii")
    path.with_name(path.name + ".pub").write_text(f"{line} {comment}\n")
    return line


class KeyedSSHD:
    """One sshd on a fixed address and port whose host keys can be swapped.

    The legitimate host has an ed25519 and an ECDSA key; the impostors have
    keys of their own. ``serve(*names)`` (re)starts sshd offering those keys.
    """

    def __init__(self, binary: str, directory: Path, address: str, client_public: str) -> None:
        self.binary = binary
        self.directory = directory
        self.address = address
        self.port = free_port(address)
        (directory / "authorized_keys").write_text(client_public + "\n")
        self.keys = {
            "ed25519": write_ed25519_key(directory / "host_ed25519", "host"),
            "ecdsa": write_ecdsa_key(directory / "host_ecdsa", "host"),
            "impostor-ed25519": write_ed25519_key(directory / "impostor_ed25519", "impostor"),
            "impostor-ecdsa": write_ecdsa_key(directory / "impostor_ecdsa", "impostor"),
        }
        self.files = {
            "ed25519": directory / "host_ed25519",
            "ecdsa": directory / "host_ecdsa",
            "impostor-ed25519": directory / "impostor_ed25519",
            "impostor-ecdsa": directory / "impostor_ecdsa",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def fingerprint(self, name: str) -> str:
        return openssh_fingerprint(self.keys[name])

    def serve(self, *names: str) -> None:
        self.stop()
        config = SSHD_CONFIG.format(
            address=self.address,
            port=self.port,
            host_key=self.files[names[0]],
            pid_file=self.directory / "sshd.pid",
            authorized_keys=self.directory / "authorized_keys",
        )
        extra = "".join(f"HostKey {self.files[n]}\n" for n in names[1:])
        (self.directory / "sshd_config").write_text(config + extra)
        log = (self.directory / "sshd.log").open("wb")
        self.proc = subprocess.Popen(
            [self.binary, "-D", "-e", "-f", str(self.directory / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.directory / "sshd.log").read_text()
            try:
                socket.create_connection((self.address, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"sshd on {self.address}:{self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def sshd(tmp_path: Path, ssh_hosts: list[SSHTestHost]) -> Iterator[KeyedSSHD]:
    """A swappable sshd on 127.0.0.31 accepting the test client key."""
    binary = require_sshd()
    directory = tmp_path / "keyed-sshd"
    directory.mkdir()
    client_public = ssh_hosts[0].client_key.with_name(ssh_hosts[0].client_key.name + ".pub")
    daemon = KeyedSSHD(binary, directory, "127.0.0.31", client_public.read_text().strip())
    try:
        yield daemon
    finally:
        daemon.stop()


def host_line(name: str, address: str, port: int, key: Path, root: Path) -> str:
    return (
        f'  {{ name = "{name}", connector = "ssh", address = "{address}", port = {port}, '
        f'user = "root", key = "{key}", root = "{root}" }},\n'
    )


@pytest.fixture
def lab(
    run: Runner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ssh_hosts: list[SSHTestHost],
    sshd: KeyedSSHD,
) -> Path:
    """A workspace: 'lab' is the three session sshd hosts, 'edge' is the swappable one."""
    root = tmp_path / "lab"
    run.ok("init", str(root), "--name", "lab")
    key = ssh_hosts[0].client_key
    lab_hosts = "".join(
        host_line(h.name, h.address, h.port, key, tmp_path / f"root-{h.name}") for h in ssh_hosts
    )
    (root / "chassis.toml").write_text(
        '[app]\nname = "lab"\n\n'
        '[components.api]\ncommand = "true"\n\n'
        '[profiles.one]\ngroups.a = { components = ["api"] }\n\n'
        f"[environments.lab]\nhosts = [\n{lab_hosts}]\n\n"
        "[environments.edge]\nhosts = [\n"
        + host_line("e1", sshd.address, sshd.port, key, tmp_path / "root-e1")
        + '  { name = "local-1", connector = "local", root = "hosts/local-1" },\n]\n'
    )
    monkeypatch.chdir(root)
    return root


def known_lines(lab: Path, sshd: KeyedSSHD) -> list[str]:
    name = known_hosts_name(sshd.address, sshd.port)
    path = lab / ".chassis" / "known_hosts"
    text = path.read_text() if path.exists() else ""
    return [line for line in text.splitlines() if line.split(" ")[0] == name]


def trust(run: Runner, *args: str, input: str | None = None) -> tuple[int, str, object]:
    result = run("host", "trust-key", *args, "--json", input=input)
    return result.exit_code, result.stderr, json.loads(result.stdout) if result.stdout else None


@pytest.mark.parametrize(
    ("genuine", "impostor"),
    [("ed25519", "impostor-ecdsa"), ("ecdsa", "impostor-ed25519"), ("ed25519", "impostor-ed25519")],
)
def test_a_changed_key_or_key_type_is_refused_until_replace(
    run: Runner, lab: Path, sshd: KeyedSSHD, genuine: str, impostor: str
) -> None:
    sshd.serve(genuine)
    code, _, pinned = trust(run, "e1", "--yes")
    assert code == 0 and isinstance(pinned, dict)
    assert (pinned["fingerprint"], pinned["outcome"]) == (sshd.fingerprint(genuine), "pinned")
    run.ok("host", "inventory", "e1")

    sshd.serve(impostor)  # same address and port, another key (maybe of another type)
    before = (lab / ".chassis" / "known_hosts").read_text()
    inventory = run("host", "inventory", "e1", "--json")
    assert inventory.exit_code == 11
    error = json.loads(inventory.stdout)[0]["error"]
    assert "host key changed" in error
    assert sshd.fingerprint(impostor) in error and sshd.fingerprint(genuine) in error

    code, stderr, refused = trust(run, "e1", "--yes")
    assert code == 11, "a different key (or key type) was pinned without --replace"
    assert sshd.fingerprint(impostor) in stderr and sshd.fingerprint(genuine) in stderr
    assert "--replace" in stderr
    assert isinstance(refused, dict) and refused["outcome"] == "refused"
    assert (lab / ".chassis" / "known_hosts").read_text() == before
    assert run("host", "inventory", "e1").exit_code == 11

    code, _, replaced = trust(run, "e1", "--yes", "--replace")
    assert code == 0 and replaced == {
        "host": "e1",
        "key_type": sshd.keys[impostor].split()[0],
        "fingerprint": sshd.fingerprint(impostor),
        "outcome": "replaced",
        "previous": f"{sshd.keys[genuine].split()[0]} {sshd.fingerprint(genuine)}",
    }
    assert len(known_lines(lab, sshd)) == 1
    run.ok("host", "inventory", "e1")


def test_a_host_offering_several_types_is_seen_with_its_pinned_type(
    run: Runner, lab: Path, sshd: KeyedSSHD
) -> None:
    sshd.serve("ecdsa")
    assert trust(run, "e1", "--yes")[0] == 0
    sshd.serve("ed25519", "ecdsa")  # ed25519 is every client's first choice
    code, _, again = trust(run, "e1", "--yes")
    assert code == 0 and isinstance(again, dict) and again["outcome"] == "already-pinned"
    run.ok("host", "inventory", "e1")


def test_the_connector_negotiates_the_pinned_type_and_refuses_any_other(
    sshd: KeyedSSHD, ssh_hosts: list[SSHTestHost], tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    host = SSHTestHost(
        name="e1",
        address=sshd.address,
        port=sshd.port,
        user="root",
        client_key=ssh_hosts[0].client_key,
        host_key_fingerprint=sshd.fingerprint("ecdsa"),
        host_key_line=sshd.keys["ecdsa"],
        host_public_key=sshd.files["ecdsa"],
        known_hosts=known,
        root=tmp_path,
        config_dir=sshd.directory,
    )
    known.write_text(f"{known_hosts_name(sshd.address, sshd.port)} {sshd.keys['ecdsa']}\n")
    sshd.serve("ed25519", "ecdsa")
    with SSHConnector(host.settings()) as connector:
        assert connector.transport is not None
        assert connector.transport.host_key.get_name() == "ecdsa-sha2-nistp256"
        assert connector.run("echo ok").stdout == "ok\n"
    sshd.serve("ed25519")  # the pinned type is gone: paramiko must not fall back to it
    with pytest.raises(HostKeyMismatch) as caught, SSHConnector(host.settings()):
        pass
    assert sshd.fingerprint("ed25519") in str(caught.value)
    assert sshd.fingerprint("ecdsa") in str(caught.value)


def test_declining_pins_nothing_and_exits_11(run: Runner, lab: Path, sshd: KeyedSSHD) -> None:
    sshd.serve("ed25519")
    result = run("host", "trust-key", "e1", input="n\n")
    assert result.exit_code == 11
    assert sshd.fingerprint("ed25519") in result.stderr and "Trust it?" in result.stderr
    assert "declined; nothing pinned" in result.stderr
    assert known_lines(lab, sshd) == []

    assert run("host", "trust-key", "e1", input="y\n").exit_code == 0
    sshd.serve("impostor-ecdsa")
    result = run("host", "trust-key", "e1", "--replace", input="n\n")
    assert result.exit_code == 11 and "Replace the pin?" in result.stderr
    assert sshd.fingerprint("impostor-ecdsa") in result.stderr
    assert sshd.fingerprint("ed25519") in result.stderr
    assert [line.split()[2] for line in known_lines(lab, sshd)] == [sshd.keys["ed25519"].split()[1]]


def test_all_pins_every_host_of_an_environment(
    run: Runner, lab: Path, sshd: KeyedSSHD, ssh_hosts: list[SSHTestHost]
) -> None:
    sshd.serve("ed25519")
    code, _, results = trust(run, "--all", "--env", "lab", "--yes")
    assert code == 0 and isinstance(results, list)
    assert [(r["host"], r["fingerprint"], r["outcome"]) for r in results] == [
        (h.name, h.host_key_fingerprint, "pinned") for h in ssh_hosts
    ]
    assert known_lines(lab, sshd) == []  # e1 is in another environment
    run.ok("host", "inventory", "h1", "h2", "h3")

    code, _, results = trust(run, "h1", "e1", "--yes")  # several names
    assert code == 0 and isinstance(results, list)
    assert [r["outcome"] for r in results] == ["already-pinned", "pinned"]

    code, _, results = trust(run, "--all", "--yes")  # every ssh host; local ones skipped
    assert code == 0 and isinstance(results, list)
    assert sorted(r["host"] for r in results) == ["e1", "h1", "h2", "h3"]

    assert run("host", "trust-key", "--all", "h1").exit_code == 2
    assert run("host", "trust-key").exit_code == 2
    assert run("host", "trust-key", "h1", "--env", "lab").exit_code == 2


def test_two_pins_for_one_host_are_refused_on_connect(
    run: Runner, lab: Path, sshd: KeyedSSHD
) -> None:
    # What pinning per key type used to leave: the genuine ed25519 key and an
    # impostor's ECDSA key, both pinned for the same host.
    sshd.serve("ed25519")
    assert trust(run, "e1", "--yes")[0] == 0
    name = known_hosts_name(sshd.address, sshd.port)
    known = lab / ".chassis" / "known_hosts"
    known.write_text(known.read_text() + f"{name} {sshd.keys['impostor-ecdsa']}\n")
    sshd.serve("impostor-ecdsa")
    result = run("host", "inventory", "e1", "--json")
    assert result.exit_code == 11
    error = json.loads(result.stdout)[0]["error"]
    assert "2 host keys are pinned" in error and "--replace" in error
    assert sshd.fingerprint("ed25519") in error and sshd.fingerprint("impostor-ecdsa") in error

    code, stderr, _ = trust(run, "e1", "--yes")
    assert code == 11 and "pins 2 keys" in stderr
    sshd.serve("ed25519")
    assert trust(run, "e1", "--yes", "--replace")[0] == 0
    assert len(known_lines(lab, sshd)) == 1
    run.ok("host", "inventory", "e1")


def test_pinning_rewrites_only_the_hosts_own_entries(tmp_path: Path, sshd: KeyedSSHD) -> None:
    known = tmp_path / "known_hosts"
    name = known_hosts_name(sshd.address, sshd.port)
    hashed = paramiko.HostKeys.hash_host(name)
    other = f"[10.0.0.9]:22 {sshd.keys['ecdsa']}"
    known.write_text(
        "# a comment\n"
        f"{other}\n"
        f"{name},other-alias {sshd.keys['ed25519']}\n"
        f"{hashed} {sshd.keys['impostor-ecdsa']}\n"
        f"{name} {sshd.keys['impostor-ed25519']}"  # no trailing newline
    )
    known.chmod(0o600)
    assert len(pinned_keys(known, sshd.address, sshd.port)) == 3
    key = paramiko.ECDSAKey(data=base64.b64decode(sshd.keys["ecdsa"].split()[1]))
    pin_known_host(known, sshd.address, sshd.port, key)
    assert known.read_text() == (
        f"# a comment\n{other}\nother-alias {sshd.keys['ed25519']}\n{name} {sshd.keys['ecdsa']}\n"
    )
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    assert [p.fingerprint for p in pinned_keys(known, sshd.address, sshd.port)] == [
        sshd.fingerprint("ecdsa")
    ]
