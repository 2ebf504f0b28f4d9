"""Redaction by value: the secret values Chassis resolved are scrubbed in
every encoding, short values are handled as documented, the registry lives
for one command, and the patterns stop redacting Chassis's own prose."""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chassis.cli.app import scrubbed_output
from chassis.secrets import resolve
from proofs.redaction import (
    MARKER,
    SECRET_VALUES,
    Redactor,
    clear_secrets,
    register_secret,
    scrub_text,
    scrub_values,
    scrub_values_data,
)
from tests.conftest import Runner

KEY = b"per-ledger redaction key 32 byte"
SECRET = "Zq8K/x3v+N7p=Lm2@Ww9 \u00e9\"'"


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


def encoded_forms(secret: str) -> list[str]:
    data = secret.encode()
    forms = [
        secret,
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(secret, safe="")),
    ]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms += [encode(data).decode(), encode(data).decode().rstrip("=")]
    return forms


@pytest.mark.parametrize("form", range(len(encoded_forms(SECRET))))
def test_every_form_of_a_registered_value_is_scrubbed(form: int) -> None:
    text = f"line: <{encoded_forms(SECRET)[form]}> end"
    assert scrub_text(text) == text, "nothing registered yet: the patterns see nothing"
    register_secret(SECRET, "env DB_PASS")
    assert scrub_text(text) == "line: <[redacted]> end"
    redactor = Redactor(KEY)
    assert redactor.value(text) == f"line: <{redactor.marker(SECRET)}> end", (
        "the marker of the value, whichever form was found"
    )
    assert redactor.data({"k": [text]}) == {"k": [f"line: <{redactor.marker(SECRET)}> end"]}
    assert scrub_values(text) == "line: <[redacted]> end"


def bits_of_secret_only(prefix: bytes, secret: bytes, encoded: str) -> list[str]:
    """Every 8-character window of ``encoded`` whose characters carry bits of
    the secret alone (character j holds bits 6j..6j+5 of the input)."""
    first, last = 8 * len(prefix), 8 * (len(prefix) + len(secret))
    pure = [6 * j >= first and 6 * j + 6 <= last for j in range(len(encoded))]
    return [encoded[j : j + 8] for j in range(len(encoded) - 7) if all(pure[j : j + 8])]


@given(
    st.text(string.printable + "\u00e9\u4e2d", min_size=8, max_size=40).filter(
        lambda s: s.strip() == s and "\n" not in s and "\r" not in s
    ),
    st.binary(max_size=7),
    st.binary(max_size=7),
)
def test_base64_at_every_offset_inside_longer_data(secret: str, prefix: bytes, tail: bytes) -> None:
    clear_secrets()
    register_secret(secret)
    data = prefix + secret.encode() + tail
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(data).decode()
        scrubbed = scrub_text(f"out: {encoded}")
        assert "[redacted]" in scrubbed
        for window in bits_of_secret_only(prefix, secret.encode(), encoded):
            assert window not in scrubbed, (window, scrubbed)


def test_basic_authorization_and_echo_pipe_base64() -> None:
    register_secret("s3cr3t-password-value")
    header = base64.b64encode(b"deploy:s3cr3t-password-value").decode()
    echoed = base64.b64encode(b"s3cr3t-password-value\n").decode()
    out = scrub_values(f"Authorization: Basic {header}\n{echoed}")
    assert "s3cr3t" not in out and header not in out and echoed[:24] not in out
    assert out.count("[redacted]") == 2


def test_short_values_are_handled_as_documented() -> None:
    register_secret("p4ss7", "env SHORT")
    register_secret("ab", "env TINY")
    register_secret("whole-value-long-enough", "env LONG")
    words = scrub_text("pw p4ss7; p4ss7x xp4ss7 (p4ss7)")
    assert words == "pw [redacted]; p4ss7x xp4ss7 ([redacted])", "short: whole words only"
    assert scrub_text("ab abc cab ab") == "ab abc cab ab", "too short to tell from text"
    assert scrub_text("xxwhole-value-long-enoughyy") == "xx[redacted]yy", "long: anywhere"
    assert SECRET_VALUES.too_short() == ["env TINY"]
    assert len(SECRET_VALUES) == 2


def test_lines_of_a_multi_line_value_are_scrubbed_on_their_own(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
        "QyNTUxOQAAACBexampleexampleexampleexampleexampleexampleAAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----\n"
    )
    value = resolve("SSH_KEY", f"file:{key}", component="api")
    assert value.endswith("-----") and len(SECRET_VALUES) > 0
    tail = "error: bad line QyNTUxOQAAACBexampleexampleexampleexampleexampleexampleAAAAAA"
    assert scrub_values(tail) == "error: bad line [redacted]"
    assert scrub_values("-----END OPENSSH PRIVATE KEY-----") == "-----END OPENSSH PRIVATE KEY-----"


def test_resolving_from_env_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DB_PASS", "resolved-from-env-9f2c")
    assert resolve("DB_PASS", "env:SHOP_DB_PASS", component="api") == "resolved-from-env-9f2c"
    assert scrub_text("connecting with resolved-from-env-9f2c") == "connecting with [redacted]"


def test_markers_survive_and_scrubbing_is_idempotent() -> None:
    register_secret("redacted:hmac-sha256")
    redactor = Redactor(KEY)
    once = redactor.value("a redacted:hmac-sha256 b [redacted] c")
    assert MARKER.search(once) and redactor.value(once) == once
    assert scrub_text("[redacted]") == "[redacted]"


def test_data_keeps_its_shape() -> None:
    register_secret("db-password-123456")
    data = {"k db-password-123456": ("x db-password-123456", ["db-password-123456", 3, None])}
    assert scrub_values_data(data) == {"k [redacted]": ("x [redacted]", ["[redacted]", 3, None])}
    clear_secrets()
    assert scrub_values_data(data) is data, "nothing registered: nothing copied"


def test_the_output_boundary_scrubs_and_forgets(capsys: pytest.CaptureFixture[str]) -> None:
    register_secret("stale-from-another-command")
    with scrubbed_output():
        assert not SECRET_VALUES, "a command starts with an empty registry"
        register_secret("printed-by-a-table-123")
        register_secret("xy", "component api: env PIN (env:PIN)")
        click.echo("row: printed-by-a-table-123 stale-from-another-command")
        click.echo("note printed-by-a-table-123", err=True)
    out, err = capsys.readouterr()
    assert out == "row: [redacted] stale-from-another-command\n"
    assert err.splitlines()[0] == "note [redacted]"
    assert err.splitlines()[1] == (
        "chassis: warning: component api: env PIN (env:PIN) is shorter than 4 characters: it "
        "cannot be told from ordinary text and is not scrubbed from what chassis records or prints"
    )
    assert not SECRET_VALUES, "and ends with an empty one"


@pytest.mark.parametrize(
    "text",
    [
        "x/chassis.toml: components.api.env.DB_PASSWORD: looks like a secret; chassis.toml is "
        "shared",
        "x/chassis.toml: components.api.env.DB_PASSWORD: the value looks like a secret (a "
        "password, token or private key)",
        "bundle /tmp/b.tar.gz: member 'token': hard link to 'x' escapes the bundle",
        "bundle /tmp/b.tar.gz: member 'secret': hard link to 'y', which is not an earlier file",
        "the endpoint wants Basic authentication",
        "session: started at 12:00 for 3 hosts",
    ],
)
def test_chassis_prose_is_not_redacted(text: str) -> None:
    assert scrub_text(text) == text
    assert Redactor(KEY).value(text) == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("password: hunter2 and more", "hunter2"),
        ("password: hunter", "hunter"),
        ("token:abc def", "abc"),
        ("DB_PASSWORD=looks like", "looks"),
        ('"password": "two words"', "two words"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("Bearer averyveryverylongwordtoken", "averyveryverylongwordtoken"),
    ],
)
def test_credentials_are_still_redacted(text: str, secret: str) -> None:
    assert secret not in scrub_text(text)


def test_stack_errors_name_the_key_in_full(run: Runner, workspace: Path) -> None:
    stack = workspace / "chassis.toml"
    stack.write_text(
        stack.read_text()
        + '\n[components.api]\ncommand = "true"\nenv = { DB_PASSWORD = "hunter2" }\n'
    )
    result = run("stack", "validate")
    assert result.exit_code == 3
    assert "components.api.env.DB_PASSWORD: looks like a secret;" in result.stderr
    assert "[redacted]" not in result.stderr and "hunter2" not in result.stderr
