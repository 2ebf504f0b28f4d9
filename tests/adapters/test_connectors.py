"""SSH connector against real sshd hosts: reuse, reachability, auth, host keys."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.connectors import (
    LocalConnector,
    SSHConnector,
    SSHSettings,
    add_known_host,
    fetch_host_key,
    known_hosts_name,
)
from adapters.errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectorError,
    ConnectorTimeout,
    HostKeyMismatch,
    HostUnreachable,
    RemoteFileMissing,
    UnknownHostKey,
)
from tests import sshd
from tests.sshd import SSHTestHost, openssh_fingerprint, write_ed25519_key

# -- connection reuse ------------------------------------------------------


def test_one_connection_serves_every_step(ssh_host: SSHTestHost) -> None:
    with SSHConnector(ssh_host.settings()) as c:
        transport = c.transport
        assert transport is not None and transport.is_active()
        for i in range(3):
            assert c.run(f"echo {i}").stdout == f"{i}\n"
        path = f"{ssh_host.root}/f"
        c.put_bytes(b"x", path)
        assert c.read_bytes(path) == b"x"
        assert c.sha256(path) is not None
        c.symlink_swap(path, f"{ssh_host.root}/link")
        assert c.transport is transport
        c.connect()  # idempotent
        assert c.transport is transport
    assert not transport.is_active()


def test_close_then_use_reconnects(ssh_host: SSHTestHost) -> None:
    c = SSHConnector(ssh_host.settings())
    before = c.transport  # lazy: nothing opened before first use
    assert before is None
    assert c.run("echo 1").ok
    old = c.transport
    assert old is not None
    c.close()
    assert not old.is_active()
    assert c.run("echo 2").stdout == "2\n"
    assert c.transport is not old
    c.close()


def test_every_test_host_is_distinct(ssh_hosts: list[SSHTestHost]) -> None:
    assert [h.address for h in ssh_hosts] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    assert len({h.host_key_fingerprint for h in ssh_hosts}) == 3
    for host in ssh_hosts:
        with SSHConnector(host.settings()) as c:
            assert c.run("echo $SSH_CONNECTION", check=True).stdout.split()[2] == host.address


# -- reachability ----------------------------------------------------------


def test_connection_refused_is_host_unreachable(
    closed_port: tuple[str, int], tmp_path: Path
) -> None:
    address, port = closed_port
    settings = SSHSettings(
        name="gone", address=address, port=port, user="root", known_hosts=tmp_path / "kh"
    )
    with pytest.raises(HostUnreachable) as info:
        SSHConnector(settings).run("true")
    message = str(info.value)
    assert message.startswith(f"host gone ({address}:{port}): unreachable: ")
    assert "refused" in message.lower()
    assert "\n" not in message
    assert isinstance(info.value, ConnectionError)
    assert info.value.exit_code == 11


def test_silent_listener_gives_up_at_the_connect_timeout(
    silent_listener: tuple[str, int], ssh_host: SSHTestHost
) -> None:
    address, port = silent_listener
    settings = ssh_host.settings(name="mute", address=address, port=port, connect_timeout=2)
    with pytest.raises((HostUnreachable, ConnectorTimeout)) as info:
        SSHConnector(settings).connect()
    assert f"host mute ({address}:{port})" in str(info.value)


def test_fetch_host_key_reports_unreachable(closed_port: tuple[str, int]) -> None:
    with pytest.raises(HostUnreachable, match="unreachable"):
        fetch_host_key(*closed_port, timeout=2)


# -- authentication --------------------------------------------------------


def test_wrong_client_key_is_authentication_failed(ssh_host: SSHTestHost, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    write_ed25519_key(other, "not authorised")
    with pytest.raises(AuthenticationFailed) as info:
        SSHConnector(ssh_host.settings(key_file=other)).connect()
    message = str(info.value)
    assert isinstance(info.value, PermissionError)
    assert f"host h1 ({ssh_host.where})" in message
    assert str(other) in message
    assert "PRIVATE KEY" not in message
    assert other.read_text().splitlines()[1] not in message


def test_missing_client_key_file_is_authentication_failed(
    ssh_host: SSHTestHost, tmp_path: Path
) -> None:
    with pytest.raises(AuthenticationFailed, match="missing or unreadable"):
        SSHConnector(ssh_host.settings(key_file=tmp_path / "absent")).connect()


def test_malformed_client_key_is_authentication_failed(
    ssh_host: SSHTestHost, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage_key"
    garbage.write_text("this is not a key\n")
    with pytest.raises(AuthenticationFailed) as info:
        SSHConnector(ssh_host.settings(key_file=garbage)).connect()
    assert str(garbage) in str(info.value)


def test_no_client_key_is_authentication_failed(ssh_host: SSHTestHost) -> None:
    with pytest.raises(AuthenticationFailed):
        SSHConnector(ssh_host.settings(key_file=None)).connect()


# -- host keys ---------------------------------------------------------------


def test_unknown_host_key_is_rejected_by_default(ssh_host: SSHTestHost, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    with pytest.raises(UnknownHostKey) as info:
        SSHConnector(ssh_host.settings(known_hosts=known_hosts)).connect()
    e = info.value
    assert e.fingerprint == ssh_host.host_key_fingerprint
    message = str(e)
    assert ssh_host.host_key_fingerprint in message
    assert str(known_hosts) in message
    assert "chassis host trust-key h1" in message
    assert "\n" not in message
    assert known_hosts.read_text() == ""


def test_missing_known_hosts_file_means_unknown(ssh_host: SSHTestHost, tmp_path: Path) -> None:
    known_hosts = tmp_path / "absent" / "known_hosts"
    with pytest.raises(UnknownHostKey):
        SSHConnector(ssh_host.settings(known_hosts=known_hosts)).connect()
    assert not known_hosts.exists()


def _known_hosts_with(path: Path, host: SSHTestHost, key_line: str) -> Path:
    path.write_text(f"{known_hosts_name(host.address, host.port)} {key_line}\n")
    return path


@pytest.mark.parametrize("policy", ["reject", "accept-new"])
def test_changed_host_key_is_a_mismatch(ssh_host: SSHTestHost, tmp_path: Path, policy: str) -> None:
    impostor = write_ed25519_key(tmp_path / "impostor", "old key")
    known_hosts = _known_hosts_with(tmp_path / "known_hosts", ssh_host, impostor)
    before = known_hosts.read_text()
    settings = ssh_host.settings(known_hosts=known_hosts, host_key_policy=policy)
    with pytest.raises(HostKeyMismatch) as info:
        SSHConnector(settings).connect()
    e = info.value
    assert e.fingerprint == ssh_host.host_key_fingerprint
    assert e.expected == openssh_fingerprint(impostor)
    message = str(e)
    assert ssh_host.host_key_fingerprint in message
    assert str(known_hosts) in message
    assert "host key" in message
    assert known_hosts.read_text() == before  # accept-new never overrides a pinned key


def test_a_pinned_key_of_another_type_is_a_mismatch_too(
    ssh_host: SSHTestHost, tmp_path: Path
) -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key()
    line = ecdsa.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    known_hosts = _known_hosts_with(tmp_path / "known_hosts", ssh_host, line)
    settings = ssh_host.settings(known_hosts=known_hosts, host_key_policy="accept-new")
    with pytest.raises(HostKeyMismatch):
        SSHConnector(settings).connect()


def test_accept_new_pins_the_key_for_later_strict_connections(
    ssh_host: SSHTestHost, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "ws" / "known_hosts"
    with SSHConnector(
        ssh_host.settings(known_hosts=known_hosts, host_key_policy="accept-new")
    ) as c:
        assert c.run("echo hi").stdout == "hi\n"
    line = known_hosts.read_text()
    assert line == f"[{ssh_host.address}]:{ssh_host.port} {ssh_host.host_key_line}\n"
    with SSHConnector(ssh_host.settings(known_hosts=known_hosts)) as strict:
        assert strict.run("echo again").stdout == "again\n"
    assert known_hosts.read_text() == line


def test_fetch_host_key_matches_ssh_keygen(ssh_host: SSHTestHost) -> None:
    keytype, b64, fp = fetch_host_key(ssh_host.address, ssh_host.port, timeout=5)
    assert f"{keytype} {b64}" == ssh_host.host_key_line
    assert fp == ssh_host.host_key_fingerprint
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        pytest.skip("ssh-keygen is not installed")
    out = subprocess.run(
        [keygen, "-lf", str(ssh_host.host_public_key)], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[1] == fp


def test_fetched_key_pinned_with_add_known_host_is_trusted(
    ssh_host: SSHTestHost, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    keytype, b64, _fp = fetch_host_key(ssh_host.address, ssh_host.port, timeout=5)
    add_known_host(known_hosts, ssh_host.address, ssh_host.port, keytype, b64)
    with SSHConnector(ssh_host.settings(known_hosts=known_hosts)) as c:
        assert c.run("true").ok


def test_add_known_host_format_and_replacement(tmp_path: Path) -> None:
    known_hosts = tmp_path / "ws" / "known_hosts"
    known_hosts.parent.mkdir()
    known_hosts.write_text("# pinned by hand\n10.0.0.9 ssh-ed25519 AAAAkeep")  # no newline
    known_hosts.chmod(0o600)
    add_known_host(known_hosts, "10.0.0.1", 22, "ssh-ed25519", "AAAAold")
    add_known_host(known_hosts, "10.0.0.1", 2222, "ssh-ed25519", "AAAAport")
    add_known_host(known_hosts, "10.0.0.1", 22, "ecdsa-sha2-nistp256", "AAAAecdsa")
    add_known_host(known_hosts, "10.0.0.1", 22, "ssh-ed25519", "AAAAnew")  # re-trust
    assert known_hosts.read_text().splitlines() == [
        "# pinned by hand",
        "10.0.0.9 ssh-ed25519 AAAAkeep",
        "[10.0.0.1]:2222 ssh-ed25519 AAAAport",
        "10.0.0.1 ecdsa-sha2-nistp256 AAAAecdsa",
        "10.0.0.1 ssh-ed25519 AAAAnew",
    ]
    assert known_hosts.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in known_hosts.parent.iterdir()) == [
        ".known_hosts.lock",
        "known_hosts",
    ]


# -- the fixture's own rules ----------------------------------------------------


def test_missing_sshd_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sshd, "sshd_binary", lambda: None)
    monkeypatch.setattr(sshd, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="openssh-server is not installed"):
        sshd.require_sshd()
    monkeypatch.setattr(sshd, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true but openssh-server"):
        sshd.require_sshd()


# -- settings and errors ------------------------------------------------------


def test_settings_defaults_and_validation(tmp_path: Path) -> None:
    s = SSHSettings(name="a", address="10.0.0.1", user="deploy", known_hosts=tmp_path / "kh")
    assert (s.port, s.key_file, s.connect_timeout, s.host_key_policy) == (22, None, 10.0, "reject")
    assert s.where == "10.0.0.1:22"
    assert s.known_hosts_name == "10.0.0.1"
    v6 = SSHSettings(name="b", address="::1", port=2200, user="u", known_hosts=tmp_path / "kh")
    assert (v6.where, v6.known_hosts_name) == ("[::1]:2200", "[::1]:2200")
    with pytest.raises(ValueError, match="host_key_policy"):
        SSHSettings(
            name="c",
            address="x",
            user="u",
            known_hosts=tmp_path,
            host_key_policy="yolo",  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="port"):
        SSHSettings(name="d", address="x", user="u", known_hosts=tmp_path, port=0)


def test_errors_inherit_builtins_and_carry_the_exit_code() -> None:
    cases: list[tuple[ConnectorError, type[BaseException]]] = [
        (HostUnreachable("h", "unreachable: x", where="a:1"), ConnectionError),
        (AuthenticationFailed("h", "no"), PermissionError),
        (ConnectorTimeout("h", "slow", timeout=1.0), TimeoutError),
        (RemoteFileMissing("h", "/p"), FileNotFoundError),
    ]
    for error, builtin in cases:
        assert isinstance(error, builtin)
        assert error.exit_code == 11
        assert error.host == "h"
    failed = CommandFailed("h", where="local", command="x", returncode=2, stderr="a\nb\n")
    assert (failed.returncode, failed.exit_code) == (2, 11)
    assert str(failed) == "host h (local): command exited 2: x: a | b"


def test_local_connector_names_itself_in_errors(tmp_path: Path) -> None:
    c = LocalConnector("ctl")
    assert c.where() == "local"
    with pytest.raises(RemoteFileMissing, match=r"^host ctl \(local\): no such file: "):
        c.read_bytes(str(tmp_path / "absent"))
