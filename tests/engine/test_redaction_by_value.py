"""A secret Chassis resolved never reaches a byte it records or prints.

A component gets its database password through ``from_env``, prints it (and
its base64 at every byte offset, and its percent-encoding) and then dies
before passing its health gate, on a local host and on an sshd host, with the
ledger in SQLite and in PostgreSQL. After the failed deploy the value and its
encodings are searched, as bytes, in the raw database (file or rows), every
receipt, every export format (printed and written to files) and everything
the commands printed, ``--json`` included. The pattern filter cannot catch
any of these lines ("connecting with …", bare base64): only redaction by
value can.
"""

from __future__ import annotations

import base64
import contextlib
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import pytest

from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.sample_app import build_sample_release
from tests.conftest import Runner
from tests.sshd import SSHTestHost

SECRET = "Zq8K/x3v+N7p=Lm2@Ww9"
"""Not secret-looking to the patterns; ``/ + = @`` make its encodings differ."""
DEPLOY = ("deploy", "shop", "--profile", "one", "--release", "v1")

LEAKY = textwrap.dedent(
    """\
    import base64, os, sys, time, urllib.parse
    s = os.environ["DB_PASS"]
    b = s.encode()
    print("connecting to the database with", s)
    print(base64.b64encode(b).decode())
    print(base64.b64encode(b + b"\\n").decode())
    print(base64.b64encode(b"a" + b).decode())
    print(base64.urlsafe_b64encode(b"u:" + b).decode().rstrip("="))
    print(urllib.parse.quote(s, safe=""))
    print("see https://db.example/login?p=" + urllib.parse.quote_plus(s))
    print("giving up with", s, flush=True)
    time.sleep(1)
    sys.exit(1)
    """
)


def forms(secret: str) -> list[bytes]:
    """The value and every encoding the component prints, as the parts that
    depend on the secret alone (an encoding inside a longer string shares
    its first and last characters with its neighbours)."""
    data = secret.encode()
    found = {data, quote(secret, safe="").encode(), quote_plus(secret).encode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        found.add(encode(data))
        for offset in range(3):
            encoded = encode(b"\0" * offset + data)
            found.add(encoded[-(-8 * offset // 6) : 8 * (offset + len(data)) // 6])
    assert all(len(f) >= 12 for f in found)
    return sorted(found)


def assert_clean(where: str, blob: bytes) -> None:
    for form in forms(SECRET):
        assert form not in blob, f"{form!r} found in {where}"


def dsse_payloads(text: str) -> bytes:
    """The decoded payload of every DSSE envelope in ``text`` (JSON lines or one document)."""
    decoded = b""
    for line in text.splitlines() or [text]:
        try:
            document = json.loads(line)
        except ValueError:
            continue
        stack = [document]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if "payload" in item and "payloadType" in item:
                    decoded += base64.b64decode(item["payload"])
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, str) and item.startswith("{"):
                with contextlib.suppress(ValueError):
                    stack.append(json.loads(item))
    return decoded


def write_stack(root: Path, script: Path, environment: str) -> None:
    (root / "chassis.toml").write_text(
        '[app]\nname = "shop"\n\n'
        f'[components.leaky]\ncommand = "python3 {script}"\n'
        'env = { DB_PASS = { from_env = "SHOP_DB_PASS" }, LOG_LEVEL = "info" }\n'
        'health = { type = "command", command = "test -f never-ready", interval_ms = 200, '
        "window_ms = 3000 }\n\n"
        '[profiles.one]\ngroups.all = { components = ["leaky"] }\n\n' + environment
    )


@pytest.fixture
def leaky(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, Path, str | None]]:
    """A workspace (the cwd; on PostgreSQL when the test's ``backend`` says
    so) whose one component leaks its from_env secret, the script it runs,
    and the ledger URL; the stack is written by each test."""
    url = None
    if getattr(request, "param", "sqlite") == "postgres":
        url = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("CHASSIS_LEDGER", url)
    root = tmp_path / "shop"
    run.ok("init", str(root), "--name", "shop")
    script = tmp_path / "leaky.py"
    script.write_text(LEAKY)
    monkeypatch.setenv("SHOP_DB_PASS", SECRET)
    monkeypatch.chdir(root)
    yield root, script, url


def add_release(run: Runner, tmp_path: Path) -> None:
    bundle, _ = build_sample_release(tmp_path / "dist", "v1")
    run.ok("release", "add", "v1", "--artifact", str(bundle))


def fail_and_collect(run: Runner, environment: str, tmp_path: Path) -> dict[str, bytes]:
    """Deploy twice (human and --json output), both failing at the health
    gate; then read back everything Chassis keeps or prints about it."""
    outputs: dict[str, bytes] = {}
    for n, extra in enumerate(((), ("--json",))):
        result = run(*DEPLOY, "--env", environment, *extra)
        assert result.exit_code == 16, result.output
        outputs[f"deploy {n} stdout"] = result.stdout_bytes
        outputs[f"deploy {n} stderr"] = result.stderr_bytes
    # The process output did reach the record (the receipt quotes it), scrubbed.
    receipts = json.loads(run.ok("receipts", "list", "--json").stdout)
    deploys = [r for r in receipts if r["operation"] == "deploy"]
    assert [r["status"] for r in deploys] == ["failed", "failed"], receipts
    shown = run.ok("receipts", "show", deploys[0]["digest"], "--statement").stdout
    [health] = json.loads(shown)["predicate"]["health"].values()
    assert "connecting to the database with [redacted" in health["log_tail"], health
    assert "giving up with [redacted" in health["detail"], health
    failed = json.loads(outputs["deploy 1 stdout"])
    assert failed["status"] == "failed" and "giving up with [redacted" in failed["description"]

    commands: list[tuple[str, ...]] = [
        ("ledger", "log", "--json"),
        ("history", "shop", "--env", environment, "--json"),
        ("history", "shop", "--env", environment),
        ("status", "shop", "--env", environment, "--json"),
        ("receipts", "list", "--json"),
        ("ledger", "verify"),
    ]
    for receipt in receipts:
        commands += [
            ("receipts", "show", receipt["digest"]),
            ("receipts", "show", receipt["digest"], "--statement"),
        ]
    for format in ("otlp-json", "cloudevents", "dsse"):
        commands.append(("receipts", "export", "--format", format))
        sink = tmp_path / f"export-{format}.jsonl"
        commands.append(("receipts", "export", "--format", format, "--to", str(sink), "--json"))
    for command in commands:
        result = run.ok(*command)
        outputs[" ".join(command)] = result.stdout_bytes + result.stderr_bytes
        outputs[f"{' '.join(command)} (DSSE payloads)"] = dsse_payloads(result.stdout)
    for sink in tmp_path.glob("export-*.jsonl"):
        outputs[str(sink)] = sink.read_bytes()
        outputs[f"{sink} (DSSE payloads)"] = dsse_payloads(sink.read_text())
    return outputs


def workspace_files(root: Path) -> dict[str, bytes]:
    """Every file of the workspace state, the SQLite database and its WAL included."""
    return {str(p): p.read_bytes() for p in (root / ".chassis").rglob("*") if p.is_file()}


def postgres_rows(url: str) -> bytes:
    """Every value of every row of every table in the ledger's schema, raw."""
    import psycopg

    schema = parse_qs(urlsplit(url).query)["schema"][0]
    blob = bytearray()
    with psycopg.connect(url.split("?")[0]) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
        assert len(tables) >= 3, tables
        for (table,) in tables:
            for row in conn.execute(f'SELECT * FROM "{schema}"."{table}"'):
                for value in row:
                    blob += _raw(value) + b"\n"
    return bytes(blob)


def _raw(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False).encode()
    return str(value).encode()


@pytest.mark.parametrize(
    "leaky", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_printed_secret_reaches_no_byte_on_a_local_host(
    run: Runner, leaky: tuple[Path, Path, str | None], tmp_path: Path
) -> None:
    root, script, url = leaky
    host_root = tmp_path / "host-dev-1"
    write_stack(
        root,
        script,
        f'[environments.dev]\nhosts = [{{ name = "dev-1", connector = "local", '
        f'root = "{host_root}" }}]\n',
    )
    try:
        add_release(run, tmp_path)
        outputs = fail_and_collect(run, "dev", tmp_path)
    finally:
        DirectSupervisor(LocalConnector("dev-1"), str(host_root)).stop("leaky")
    log = next((host_root / "logs").glob("*leaky*"), None)
    assert log is not None and SECRET.encode() in log.read_bytes(), "the process did print it"
    outputs.update(workspace_files(root))
    if url is not None:
        outputs["postgres rows"] = postgres_rows(url)
    else:
        assert any(name.endswith("ledger.db") for name in outputs)
    for where, blob in outputs.items():
        assert_clean(where, blob)


def test_a_printed_secret_reaches_no_byte_on_an_sshd_host(
    run: Runner,
    leaky: tuple[Path, Path, str | None],
    tmp_path: Path,
    ssh_hosts: list[SSHTestHost],
) -> None:
    root, script, _ = leaky
    host = ssh_hosts[0]
    host_root = tmp_path / "root-h1"
    write_stack(
        root,
        script,
        f'[environments.lab]\nhosts = [{{ name = "{host.name}", connector = "ssh", '
        f'address = "{host.address}", port = {host.port}, user = "{host.user}", '
        f'key = "{host.client_key}", root = "{host_root}" }}]\n',
    )
    run.ok("host", "trust-key", host.name, "--yes")
    try:
        add_release(run, tmp_path)
        outputs = fail_and_collect(run, "lab", tmp_path)
    finally:
        with SSHConnector(host.settings()) as connector:
            DirectSupervisor(connector, str(host_root)).stop("leaky")
    log = next((host_root / "logs").glob("*leaky*"), None)
    assert log is not None and SECRET.encode() in log.read_bytes(), "the process did print it"
    outputs.update(workspace_files(root))
    for where, blob in outputs.items():
        assert_clean(where, blob)
