"""Planted secrets never survive redaction; markers compare equal values."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proofs.redaction import MARKER, Redactor, is_secret_key, scrub_text

KEY = b"per-ledger redaction key 32 byte"
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIFzSecretSecretSecretSecretSecretSecret0000\n"
    "-----END PRIVATE KEY-----\n"
)


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(KEY)


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "DB_PASSWORD",
        "db-passwd",
        "apiKey",
        "APIKey",
        "api_key",
        "x-api-key",
        "session_id",
        "sessionId",
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "Set-Cookie",
        "credentials",
        "aws_secret_access_key",
        "AWS_ACCESS_KEY_ID",
        "private_key",
        "privateKey",
        "githubToken",
        "token_count",
        "dbpassword",
        "clientSecret",
    ],
)
def test_secret_like_keys(name: str) -> None:
    assert is_secret_key(name)
    assert Redactor.is_secret_key(name)


@pytest.mark.parametrize(
    "name", ["keyid", "sig", "name", "author", "host", "release_id", "revision", "digest", "key"]
)
def test_innocent_keys(name: str) -> None:
    assert not is_secret_key(name)


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("DB_PASSWORD=hunter2 next=1", "hunter2", "next=1"),
        ("curl -H 'Authorization: Bearer abcdef123456'", "abcdef123456", "curl -H"),
        ("postgresql://alice:pa55w0rd@db.internal:5432/ledger", "pa55w0rd", "alice"),
        ("https://alice:p@ss@w0rd@example.com/x", "w0rd", "@example.com/x"),
        ("see https://example.com/cb?code=1&token=tok3nvalue", "tok3nvalue", "code=1"),
        ('{"apiKey": "k3y with spaces", "n": 1}', "k3y with spaces", '"n": 1'),
        ("{'password': b'hunter2'}", "hunter2", "password"),
        ('{\\"secret\\": \\"s3cr3t\\"}', "s3cr3t", "secret"),
        ('password="unterminated hunter2', "hunter2", "password"),
        (f"key material:\n{PEM}done", "SecretSecret", "done"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEtruncatedSecret", "truncatedSecret", ""),
        ("use ghp_" + "A1b2" * 9 + " now", "A1b2A1b2", "now"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "0123456789", ""),
        ("aws AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE", "aws"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end", "c2lnbmF0dXJl", "end"),
        ("slack xoxb-1234567890-abcdefghij", "abcdefghij", "slack"),
        ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA", "Basic"),
    ],
)
def test_secret_looking_text(redactor: Redactor, text: str, secret: str, kept: str) -> None:
    redacted = redactor.value(text)
    assert secret not in redacted
    assert kept in redacted
    assert MARKER.search(redacted)
    assert redactor.value(redacted) == redacted, "redaction is idempotent"
    assert secret not in scrub_text(text)
    assert "[redacted]" in scrub_text(text)
    assert scrub_text(text, redactor) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "deployed shop r3 to 2 hosts in 1.2s",
        "https://example.com:8443/health?x=1",
        "basic health check passed",
        "release ab12cd34 on host web-1",
        "",
    ],
)
def test_innocent_text_is_unchanged(redactor: Redactor, text: str) -> None:
    assert redactor.value(text) == text


def test_marker_form(redactor: Redactor) -> None:
    import hashlib
    import hmac

    expected = hmac.new(KEY, b"hunter2", hashlib.sha256).hexdigest()[:16]
    assert redactor.data({"password": "hunter2"}) == {
        "password": f"[redacted:hmac-sha256:{expected}]"
    }
    other = Redactor(b"another ledger's redaction key!!")
    assert other.marker("hunter2") != redactor.marker("hunter2")


def test_values_under_secret_keys(redactor: Redactor) -> None:
    data = {
        "token": None,
        "auth": True,
        "session": {"id": "abc", "host": "h"},
        "tokens": ["a", "b"],
        "pin_password": 1234,
        "private_key": b"raw",
    }
    redacted = redactor.data(data)
    assert redacted["token"] is None
    assert redacted["auth"] is True
    for name in ("session", "tokens", "pin_password", "private_key"):
        assert MARKER.fullmatch(redacted[name]), name
    assert redactor.data(redacted) == redacted


def test_deep_copy_and_keys_scanned(redactor: Redactor) -> None:
    data: dict[str, Any] = {
        "hosts": {"ssh://deploy:hunter2@web-1": {"status": "ok"}},
        "steps": ({"argv": ["app", "--password=hunter2"]},),
        "n": 3,
        "ratio": 0.5,
    }
    redacted = redactor.data(data)
    assert "hunter2" not in repr(redacted)
    assert isinstance(redacted["steps"], tuple)
    assert redacted["n"] == 3 and redacted["ratio"] == 0.5
    assert data["steps"][0]["argv"][1] == "--password=hunter2", "input untouched"


def test_innocent_data_passes_unchanged(redactor: Redactor) -> None:
    data = {
        "operation": "deploy",
        "hosts": {"web-1": {"status": "succeeded", "release_id": "ab" * 32}},
        "revision": 3,
        "label": "v1.2.3",
        "keyid": "cd" * 32,
        "nested": [{"name": "x", "url": "https://example.com/a?b=c"}],
    }
    assert redactor.data(data) == data


def test_same_value_same_marker(redactor: Redactor) -> None:
    one = redactor.data({"a": {"password": "hunter2"}, "b": "DB_PASSWORD=hunter2"})
    two = redactor.data({"password": "hunter2", "other": "Bearer different1"})
    assert one["a"]["password"] == two["password"]
    assert one["b"] == f"DB_PASSWORD={two['password']}"
    assert two["other"] != f"Bearer {two['password']}"


def test_short_key_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Redactor(b"short")


# Secrets start with a non-hex letter so they can never occur inside a marker.
secrets = st.text(alphabet=string.ascii_letters + string.digits, min_size=10, max_size=30).map(
    lambda s: "Zq" + s
)
secret_keys = st.sampled_from(
    ["password", "DB_PASSWORD", "apiKey", "x-api-key", "session_id", "Authorization", "token"]
)
innocent_keys = st.sampled_from(["name", "host", "status", "note", "url", "argv", "detail"])


@st.composite
def planted(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """A nested structure and the secrets planted in it."""
    planted_secrets: list[str] = []

    def leaf() -> Any:
        kind = draw(st.integers(0, 7))
        secret = draw(secrets)
        if kind == 0:
            planted_secrets.append(secret)
            return {draw(secret_keys): secret}
        if kind == 1:
            planted_secrets.append(secret)
            return f"postgresql://user:{secret}@db/x"
        if kind == 2:
            planted_secrets.append(secret)
            return f"note: Authorization: Bearer {secret} end"
        if kind == 3:
            planted_secrets.append(secret)
            return f"-----BEGIN EC PRIVATE KEY-----\n{secret}\n-----END EC PRIVATE KEY-----"
        if kind == 4:
            planted_secrets.append(secret)
            return f"{draw(secret_keys)}={secret}"
        if kind == 5:
            planted_secrets.append(secret)
            return {draw(secret_keys): [secret, {"inner": secret}]}
        return draw(st.one_of(st.integers(), st.booleans(), st.none(), st.text(max_size=5)))

    def build(depth: int) -> Any:
        if depth == 0 or draw(st.booleans()):
            return leaf()
        if draw(st.booleans()):
            return [build(depth - 1) for _ in range(draw(st.integers(0, 3)))]
        return {
            f"{draw(innocent_keys)}{i}": build(depth - 1) for i in range(draw(st.integers(0, 3)))
        }

    return build(4), planted_secrets


@given(planted())
def test_planted_secrets_never_appear(case: tuple[Any, list[str]]) -> None:
    data, planted_secrets = case
    redactor = Redactor(KEY)
    out = json.dumps(redactor.data(data))
    for secret in planted_secrets:
        assert secret not in out
    assert json.dumps(redactor.data(redactor.data(data))) == out


@given(secrets, secrets)
def test_markers_are_equal_exactly_for_equal_values(a: str, b: str) -> None:
    redactor = Redactor(KEY)
    marker_a = redactor.data({"password": a})["password"]
    marker_b = redactor.data({"password": b})["password"]
    assert (marker_a == marker_b) == (a == b)
    assert redactor.value(f"password={a}") == f"password={marker_a}"


_FRAGMENTS = [
    "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
    "Bearer abcdefghijklmnopqrstu",
    "BASIC dXNlcjpwYXNzd29yZA==",
    "https://user:hunter22@db.example/x",
    "DB_PASSWORD=s3cr3tvalue",
    "?Token=abc12345",
    '"apiKey": "k-123456789"',
    "AccessKey: AKIAABCDEFGHIJKLMNOP",
    "ghp_" + "a" * 36,
    "GHP_" + "a" * 36,
    "eyJhbGciOi.eyJzdWIiOi.sig",
    "xoxb-1234567890-abc",
    "sk_live_" + "b" * 20,
    "AIza" + "c" * 35,
    "SessionId: 42",
    "plain words only",
    "GET /healthz HTTP/1.1 200",
]


@given(
    parts=st.lists(
        st.one_of(st.sampled_from(_FRAGMENTS), st.text(alphabet=string.printable, max_size=30)),
        max_size=6,
    )
)
def test_the_prefilter_never_changes_what_is_redacted(parts: list[str]) -> None:
    """Issue 17: a substring prefilter skips the pattern passes for text that
    cannot match any of them; it must skip only such text."""
    from proofs.redaction import _scan, scan_patterns

    redactor = Redactor(b"k" * 32)
    text = " ".join(parts)
    assert _scan(text, redactor.marker) == scan_patterns(text, redactor.marker)


def test_a_remembered_redaction_never_outlives_the_registered_values() -> None:
    """Redaction is memoised by text (a receipt backlog repeats the same log
    lines); a value registered later must still be scrubbed from a text
    redacted before, and forgetting it must bring the text back."""
    from proofs.redaction import SECRET_VALUES

    redactor = Redactor(KEY)
    text = "started with Zq9f8e7d6c5b4a"
    try:
        assert redactor.value(text) == text
        assert redactor.data({"log": [text]}) == {"log": [text]}
        SECRET_VALUES.register("Zq9f8e7d6c5b4a", "API_TOKEN")
        redacted = redactor.value(text)
        assert "Zq9f8e7d6c5b4a" not in redacted
        assert redactor.data({"log": [text]}) == {"log": [redacted]}
    finally:
        SECRET_VALUES.clear()
    assert redactor.value(text) == text
