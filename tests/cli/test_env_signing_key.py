"""CHASSIS_SIGNING_KEY (issue 13 item 4): the acting key from the environment,
for CI, instead of a key file; never echoed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import click
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chassis.cli.app import scrubbed_output
from chassis.keyring import env_signing_key_text
from ledger.keys import load_keypair
from tests.conftest import Runner

ENV = "CHASSIS_SIGNING_KEY"


def forms(pem: str) -> dict[str, str]:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return {
        "pem": pem,
        "pem with \\n": pem.strip().replace("\n", "\\n"),
        "base64 of the pem": base64.b64encode(pem.encode()).decode(),
        "base64 seed": base64.b64encode(seed).decode(),
        "url-safe base64 seed, unpadded": base64.urlsafe_b64encode(seed).decode().rstrip("="),
        "hex seed": seed.hex(),
    }


def everything_written(workspace: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (workspace / ".chassis").rglob("*") if p.is_file())


def test_the_env_key_signs_without_a_key_file(
    run: Runner, workspace: Path, isolation: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = isolation / "shop-root.key"
    pem = key_file.read_text()
    root = load_keypair(key_file)
    key_file.unlink()
    refused = run("ledger", "checkpoint")
    assert refused.exit_code == 5 and "no private key 'shop-root'" in refused.stderr
    body = "".join(pem.strip().splitlines()[1:-1])
    for i, (name, value) in enumerate(forms(pem).items()):
        monkeypatch.setenv(ENV, value)
        (isolation / f"k{i}.pub").write_text(
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        pub = str(isolation / f"k{i}.pub")
        trusted = run.ok("--debug", "key", "trust", pub, "--roles", "approver")
        checkpoint = run.ok("ledger", "checkpoint", "--json")
        shown = run.ok("key", "list")
        for result in (trusted, checkpoint, shown):
            text = result.stdout + result.stderr
            assert value not in text and body not in text, name
        assert json.loads(checkpoint.stdout)["keyid"] == root.keyid, name
        written = everything_written(workspace)
        assert value.encode() not in written and body.encode() not in written, name
        assert os.environ[ENV] == value  # put back after the command
    run.ok("ledger", "verify")


def test_the_env_key_wins_over_key_with_a_note(
    run: Runner, workspace: Path, isolation: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.ok("key", "new", "ops", "--roles", "operator")
    monkeypatch.setenv(ENV, (isolation / "shop-root.key").read_text())
    result = run.ok("--key", "ops", "ledger", "checkpoint")
    assert "acting as the key in CHASSIS_SIGNING_KEY" in result.stderr
    assert "--key/CHASSIS_KEY 'ops' is ignored" in result.stderr


@pytest.mark.parametrize(
    "value",
    [
        "not a key at all, 0123456789abcdef",
        "-----BEGIN PRIVATE KEY-----\nTm90QUtleUF0QWxsQnV0TG9uZ0Vub3VnaA==\n"
        "-----END PRIVATE KEY-----",
        base64.b64encode(b"sixteen-byte-key").decode(),
        "zz" * 32,
    ],
)
def test_a_malformed_env_key_is_one_line_without_the_value(
    run: Runner, workspace: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ENV, value)
    for args in (("ledger", "checkpoint"), ("--debug", "ledger", "checkpoint")):
        result = run(*args)
        assert result.exit_code == 5, result.stderr
        assert (
            "chassis: error: CHASSIS_SIGNING_KEY: expected an Ed25519 private key: PKCS#8 PEM"
            in result.stderr
        )
        for line in value.splitlines():
            assert line not in result.stdout + result.stderr
    assert run("ledger", "checkpoint").stderr.count("\n") == 1


def test_an_untrusted_env_key_is_refused_without_the_value(
    run: Runner, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger = Ed25519PrivateKey.generate()
    value = stranger.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()
    monkeypatch.setenv(ENV, value)
    result = run("key", "new", "sneaky", "--roles", "admin")
    assert result.exit_code == 6, result.stderr
    assert value not in result.stdout + result.stderr


def test_the_value_leaves_the_environment_for_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Processes a command starts (a local host's steps, components) do not
    inherit it, and whatever prints it is scrubbed."""
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    value = base64.b64encode(seed).decode()
    monkeypatch.setenv(ENV, value)
    with scrubbed_output():
        assert ENV not in os.environ
        assert env_signing_key_text() == value
        child = subprocess.run(
            ["/bin/sh", "-c", f'printf %s "${ENV}"'], capture_output=True, text=True, check=True
        )
        assert child.stdout == ""
        click.echo(f"leak {value} and {seed.hex()}")
    assert os.environ[ENV] == value
    out = capsys.readouterr().out
    assert value not in out and seed.hex() not in out and out.count("[redacted") == 2


def test_init_joins_a_ledger_with_the_env_key(
    run: Runner, workspace: Path, isolation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = isolation / "shop-root.key"
    root = load_keypair(key_file)
    monkeypatch.setenv(ENV, key_file.read_text())
    key_file.unlink()
    db = workspace / ".chassis" / "ledger.db"
    joined = run.ok("init", str(tmp_path / "ci"), "--ledger", f"sqlite:///{db}", "--json")
    assert '"joined_existing_ledger": true' in joined.stdout
    monkeypatch.chdir(tmp_path / "ci")
    settings = json.loads((tmp_path / "ci" / ".chassis" / "workspace.json").read_text())
    assert settings["default_key"] == root.keyid[:16]
    pub = tmp_path / "other.pub"
    pub.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    run.ok("key", "trust", str(pub), "--roles", "approver")
    checkpoint = run.ok("ledger", "checkpoint", "--json")
    assert json.loads(checkpoint.stdout)["keyid"] == root.keyid
