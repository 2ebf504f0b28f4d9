"""Names are data, never code (DESIGN.md §1 principle 10; issue 11, item 2).

Values: arbitrary strings (quotes, ``$()``, backticks, newlines, NUL,
surrogates, non-characters, any Unicode) go through the one env-file writer
and then through every reader that consumes it:

- systemd's ``EnvironmentFile=`` rules, transcribed below from systemd's
  ``src/basic/env-file.c`` and ``utf8.c``, and checked against the real
  systemd parser where this machine has one (the environment.d generator);
- the host-side loader the direct supervisor's wrapper runs;
- the direct supervisor itself, starting a real process that prints its
  environment.

Each value either arrives exactly, or is refused up front with a one-line
error that names the variable and never shows the value.

Names: arbitrary strings are either refused by the name rules, or are
shell-inert (``shlex.quote(name) == name``, no leading ``-``, no ``/``), and
names drawn from the rules drive real supervisor commands, unit names and
paths without anything landing outside the host root.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from adapters.connectors.base import ENV_NAME, NAME, Connector, name_problem
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.supervisors import DirectSupervisor, ProcessSpec, envfile
from adapters.supervisors.base import check_component
from adapters.supervisors.envfile import (
    ENV_LOADER,
    parse_env_file,
    render_env_file,
    value_problem,
)
from adapters.supervisors.systemd import (
    UnitList,
    failed_start_commands,
    render_unit,
    start_commands,
    stop_commands,
    unit_name,
    unit_pattern,
    verify_command,
)
from adapters.supervisors.systemd import UnitListing as Row
from chassis.engine.releases import ReleaseError, check_release_input
from chassis.stack.spec import SECRET_KEY, StackError, validate_stack
from tests.conftest import Runner
from tests.sshd import SSHTestHost

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ENVIRONMENT_D_GENERATOR = Path(
    "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"
)

# -- strategies ----------------------------------------------------------------------

FRAGMENTS = [
    '"',
    "'",
    "\\",
    "\\\\",
    '\\"',
    "$",
    "$(id>/tmp/owned)",
    "${HOME}",
    "$HOME",
    "`id`",
    "\n",
    "\r\n",
    "\\\n",
    "\t",
    ";",
    "#",
    "=",
    " ",
    "\x00",
    "\x01",
    "\x1b[31m",
    "\x7f",
    "\ud800",
    "\udfff",
    "\ufdd0",
    "\ufffe",
    "\uffff",
    "\U0010ffff",
    "\u2028",
    "\x85",
    "é",
    "✓",
    "😀",
    "X;id>/tmp/owned;Y",
]
any_char = st.characters(codec=None, exclude_categories=())  # surrogates and NUL included
values = st.lists(st.sampled_from(FRAGMENTS) | st.text(any_char, max_size=6), max_size=8).map(
    "".join
)
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True)
any_text = st.text(any_char, max_size=80) | st.lists(st.sampled_from(FRAGMENTS), max_size=4).map(
    "".join
)


# -- systemd's EnvironmentFile= reader, transcribed ------------------------------------

WHITESPACE, NEWLINE, COMMENTS, SHELL_NEED_ESCAPE = " \t\n\r", "\n\r", "#;", '"\\`$'


def systemd_valid_utf8(data: bytes) -> bool:
    """``utf8_is_valid``: strict UTF-8 whose code points pass ``unichar_is_valid``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(
        0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE or 0xD800 <= ord(c) <= 0xDFFF
        for c in text
    )


def systemd_env_file(data: bytes) -> dict[str, str]:
    """What a unit's ``EnvironmentFile=`` gives its process.

    ``parse_env_file_internal`` + ``load_env_file_push`` (``src/basic/env-file.c``):
    a byte state machine over the C string (so it ends at the first NUL); an
    assignment whose key or value is not valid UTF-8 is ignored; at exec,
    ``strv_env_clean`` drops invalid names.
    """
    data = data.split(b"\0", 1)[0]
    env: dict[str, str] = {}
    state = "PRE_KEY"
    key, value = bytearray(), bytearray()
    last_key_ws: int | None = None
    last_value_ws: int | None = None

    def push(chomp: bool) -> None:
        k = bytes(key[:last_key_ws] if last_key_ws is not None else key)
        v = bytes(value[:last_value_ws] if chomp and last_value_ws is not None else value)
        if systemd_valid_utf8(k) and systemd_valid_utf8(v) and ENV_NAME.match(k.decode()):
            env[k.decode()] = v.decode()

    for byte in data:
        c = chr(byte)
        if state == "PRE_KEY":
            if c in COMMENTS:
                state = "COMMENT"
            elif c not in WHITESPACE:
                state, last_key_ws = "KEY", None
                key.append(byte)
        elif state == "KEY":
            if c in NEWLINE:
                state = "PRE_KEY"
                key.clear()
            elif c == "=":
                state, last_value_ws = "PRE_VALUE", None
            else:
                if c not in WHITESPACE:
                    last_key_ws = None
                elif last_key_ws is None:
                    last_key_ws = len(key)
                key.append(byte)
        elif state in ("PRE_VALUE", "VALUE") and c in NEWLINE:
            push(chomp=state == "VALUE")
            state = "PRE_KEY"
            key.clear()
            value.clear()
            last_key_ws = None
        elif state == "PRE_VALUE":
            if c == "'":
                state = "SINGLE_QUOTE_VALUE"
            elif c == '"':
                state = "DOUBLE_QUOTE_VALUE"
            elif c == "\\":
                state = "VALUE_ESCAPE"
            elif c not in WHITESPACE:
                state = "VALUE"
                value.append(byte)
        elif state == "VALUE":
            if c == "\\":
                state, last_value_ws = "VALUE_ESCAPE", None
            else:
                if c not in WHITESPACE:
                    last_value_ws = None
                elif last_value_ws is None:
                    last_value_ws = len(value)
                value.append(byte)
        elif state == "VALUE_ESCAPE":
            state = "VALUE"
            if c not in NEWLINE:
                value.append(byte)
        elif state == "SINGLE_QUOTE_VALUE":
            if c == "'":
                state = "PRE_VALUE"
            else:
                value.append(byte)
        elif state == "DOUBLE_QUOTE_VALUE":
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_QUOTE_VALUE_ESCAPE"
            else:
                value.append(byte)
        elif state == "DOUBLE_QUOTE_VALUE_ESCAPE":
            state = "DOUBLE_QUOTE_VALUE"
            if c in SHELL_NEED_ESCAPE:
                value.append(byte)
            elif c != "\n":
                value.extend(b"\\" + bytes([byte]))
        elif state == "COMMENT":
            if c == "\\":
                state = "COMMENT_ESCAPE"
            elif c in NEWLINE:
                state = "PRE_KEY"
        elif state == "COMMENT_ESCAPE":
            state = "PRE_KEY" if c in NEWLINE else "COMMENT"
    if state not in ("PRE_KEY", "KEY", "COMMENT", "COMMENT_ESCAPE"):
        push(chomp=state == "VALUE")
    return env


def test_the_transcription_reads_what_systemd_documents() -> None:
    # systemd.exec(5) and env-file.c's own tests: quotes, escapes, comments.
    text = (
        b"# comment\n; also a comment\nA=plain  \nB='single \\\" quoted'\n"
        b'C="double \\" \\\\ \\$ \\` \\x"\nD="multi\nline"\nE=conti\\\nnued\nF=\n'
    )
    assert systemd_env_file(text) == {
        "A": "plain",
        "B": 'single \\" quoted',
        "C": 'double " \\ $ ` \\x',
        "D": "multi\nline",
        "E": "continued",
        "F": "",
    }


def rendered_or_refused(env: dict[str, str]) -> bytes | None:
    """The writer's bytes, or None after checking the refusal is clear and value-free."""
    problems = {name: value_problem(value) for name, value in env.items()}
    if not any(problems.values()):
        return render_env_file(env)
    with pytest.raises(ValueError) as caught:
        render_env_file(env)
    message = str(caught.value)
    first_bad = min(name for name, problem in problems.items() if problem)
    assert message.startswith(f"environment variable {first_bad}: value ")
    assert "\n" not in message
    explanation = problems[first_bad] or ""
    for value in env.values():
        # A value that is a word of the explanation itself ("code" in
        # "Unicode") cannot tell a leak from the message's own text.
        if len(value) > 3 and value not in explanation:
            assert value not in message
    return None


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(env_names, values, min_size=1, max_size=5))
@example({"X": "$(id>/tmp/owned-$(hostname))", "Y": "`id`;\n'\"\\"})
@example({"NUL": "a\x00b"})
@example({"SURROGATE": "\ud800"})
@example({"NONCHAR": "\ufffe"})
@example({"A": "code", "B": "\ufdd0"})
def test_values_survive_the_writer_and_systemds_rules(env: dict[str, str]) -> None:
    data = rendered_or_refused(env)
    if data is None:
        return
    assert systemd_env_file(data) == env
    assert parse_env_file(data) == env


def environment_d(tmp_path: Path, data: bytes) -> dict[str, str]:
    """The real systemd parser: its environment.d generator reads the same
    syntax with the same code, then expands ``$VAR`` and prints each value
    quoted by ``shell_maybe_quote`` (C escapes for control characters)."""
    config = tmp_path / "environment.d"
    config.mkdir(exist_ok=True)
    (config / "50-test.conf").write_bytes(data)
    out = subprocess.run(
        [str(ENVIRONMENT_D_GENERATOR)],
        env={"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.decode("utf-8")
    escapes = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}

    def unescape(match: re.Match[str]) -> str:
        code = match.group(1)
        return chr(int(code, 8)) if len(code) == 3 else escapes.get(code, code)

    found = {}
    for line in out.split("\n"):
        name, sep, text = line.partition("=")
        if sep and text.startswith('"'):
            text = re.sub(r"\\([0-7]{3}|.)", unescape, text[1:-1], flags=re.DOTALL)
        found[name] = text
    return found


@pytest.fixture(scope="module")
def generator() -> Path:
    if not ENVIRONMENT_D_GENERATOR.exists():
        if IN_CI:
            pytest.fail(f"CI=true but {ENVIRONMENT_D_GENERATOR} is missing (install systemd)")
        pytest.skip(f"{ENVIRONMENT_D_GENERATOR} is missing (install systemd)")
    return ENVIRONMENT_D_GENERATOR


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.from_regex(r"CHASSIS_T[A-Z0-9_]{0,8}", fullmatch=True),
        values.filter(lambda v: v and "$" not in v and value_problem(v) is None),
        min_size=1,
        max_size=5,
    )
)
def test_the_real_systemd_parser_agrees(
    generator: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    # (`$` is left out: environment.d expands it, EnvironmentFile= does not;
    # empty values are left out: environment.d ignores them.)
    data = render_env_file(env)
    found = environment_d(tmp_path, data)
    assert {k: found.get(k) for k in env} == env
    assert systemd_env_file(data) == env


# -- the direct supervisor's loader and the supervisor itself --------------------------------


def host_python() -> str:
    python = (
        "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else shutil.which("python3")
    )
    assert python, "python3 is needed on hosts that run the direct supervisor"
    return python


def environ_of(output: bytes) -> dict[bytes, bytes]:
    pairs = (entry.partition(b"=") for entry in output.split(b"\0") if entry)
    return {k: v for k, sep, v in pairs if sep}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(env_names, values, min_size=1, max_size=4),
    st.dictionaries(env_names, values, max_size=3),
)
def test_the_host_loader_gives_the_process_exactly_the_values(
    tmp_path: Path, spec_env: dict[str, str], file_env: dict[str, str]
) -> None:
    spec_data, file_data = rendered_or_refused(spec_env), rendered_or_refused(file_env)
    if spec_data is None or file_data is None:
        return
    gen, user = tmp_path / "gen.env", tmp_path / "user.env"
    gen.write_bytes(spec_data)
    user.write_bytes(file_data)
    # As the wrapper does: our file on fd 3, the operator's file by path.
    wrapper = 'exec 3< "$2"; exec "$4" -I -S -c "$1" "$$" "$3" "env -0" 3'
    out = subprocess.run(
        ["/bin/sh", "-c", wrapper, "sh", ENV_LOADER, str(gen), str(user), host_python()],
        env={"PATH": "/usr/bin:/bin", "INHERITED": "kept"},
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    seen = environ_of(out.stdout)
    expected = {**file_env, **spec_env}  # the supervisor's own values win
    assert {k: seen.get(k.encode()) for k in expected} == {
        k: v.encode() for k, v in expected.items()
    }
    assert seen[b"INHERITED"] == b"kept"
    assert b"LC_CTYPE" not in seen  # python3's locale coercion stays out


def test_the_host_loader_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    for text, why in [
        (b"X=$(id)\n", 'expected NAME="value"'),
        (b'X;id="1"\n', 'expected NAME="value"'),
        (b'X="a\\n"\n', "a backslash must escape"),
        (b'X="a"b\n', "text after the closing quote"),
        (b'X="open\n', "unterminated quote"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_env_file(text)
        path = tmp_path / "bad.env"
        path.write_bytes(text)
        out = subprocess.run(
            [host_python(), "-I", "-S", "-c", ENV_LOADER, str(os.getpid()), str(path), "true", ""],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 126 and why in out.stderr and "cannot load" in out.stderr


@given(
    st.text(min_size=0, max_size=140)
    | st.text(alphabet="azAZ09_-.é=\n", min_size=0, max_size=140)
    | st.from_regex(ENV_NAME.pattern.replace("\\Z", ""), fullmatch=True)
)
@example("A" * 128)
@example("A" * 129)
@example("_")
@example("9A")
@example("A\n")
@example("Ａ")  # a fullwidth letter: not ASCII
def test_the_host_readers_name_rule_is_env_name(name: str) -> None:
    """The reader checks names without importing re (it starts on every
    host launch); its rule must be ENV_NAME's, character for character."""
    valid_name = envfile._reader_namespace["valid_name"]
    assert bool(valid_name(name)) == bool(ENV_NAME.match(name)), repr(name)
    text = f'{name}="v"\n'.encode()
    if ENV_NAME.match(name):
        assert parse_env_file(text) == {name: "v"}
    elif name[:1] not in (" ", "\t", "\r", "\n", "#") and '="' not in name:
        with pytest.raises(ValueError, match="expected NAME"):
            parse_env_file(text)


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for sub in ("releases/r1", "shared", "run", "logs"):
        (root / sub).mkdir(parents=True)
    return root


def wait_for(path: Path, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_bytes()


PRINT_ENV = "env -0 > env.out.tmp && mv env.out.tmp env.out && exec sleep 30"


def run_direct(
    connector: Connector,
    root: Path,
    spec_env: dict[str, str],
    env_file: Path | None,
    component: str = "printer",
) -> dict[bytes, bytes] | None:
    """Start a process that prints its environment; None if the start was refused."""
    supervisor = DirectSupervisor(connector, str(root), settle_s=0.05)
    out = root / "releases" / "r1" / "env.out"
    out.unlink(missing_ok=True)
    spec = ProcessSpec(
        component=component,
        release_id="r1",
        command=PRINT_ENV,
        workdir=str(root / "releases" / "r1"),
        env=spec_env,
        env_file=None if env_file is None else str(env_file),
        root=str(root),
    )
    try:
        supervisor.start(spec)
    except ValueError:
        return None
    try:
        return environ_of(wait_for(out))
    finally:
        supervisor.stop(component, timeout=2)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values, values)
@example("$(touch /tmp/chassis-owned)`touch /tmp/chassis-owned`", "'\";\n\\\\$HOME")
@example("a\x00b", "ok")
def test_the_direct_supervisor_gives_a_real_process_exactly_the_value(
    local_root: Path, spec_value: str, file_value: str
) -> None:
    env_file = local_root / "shared" / "app.env"
    file_data = rendered_or_refused({"FROM_FILE": file_value})
    if file_data is None:
        event("refused by the writer")
        return
    env_file.write_bytes(file_data)
    seen = run_direct(LocalConnector("local-1"), local_root, {"FROM_SPEC": spec_value}, env_file)
    if value_problem(spec_value) is not None:
        assert seen is None  # refused before anything ran
        event("refused at start")
        return
    event("delivered to the process")
    assert seen is not None
    assert seen[b"FROM_SPEC"] == spec_value.encode()
    assert seen[b"FROM_FILE"] == file_value.encode()
    assert not Path("/tmp/chassis-owned").exists()
    assert list((local_root / "run").glob(".printer.*.env")) == []  # no secret left on disk


NASTY = {
    "QUOTES": "'single' \"double\" `back` \\ \\\\",
    "SUBST": "$(id>/tmp/chassis-owned-ssh) ${HOME} $HOME",
    "LINES": "one\ntwo\r\nthree\\\n",
    "UNICODE": "ünïcödé ✓ 😀 \u2028",
    "CONTROL": "\x01\x1b[31m\x7f",
    "EMPTY": "",
}


def test_nasty_values_reach_a_process_over_ssh(ssh_host: SSHTestHost) -> None:
    root = ssh_host.root
    for sub in ("releases/r1", "shared", "run", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    env_file = root / "shared" / "app.env"
    env_file.write_bytes(render_env_file({f"F_{k}": v for k, v in NASTY.items()}))
    with SSHConnector(ssh_host.settings()) as connector:
        seen = run_direct(connector, root, dict(NASTY), env_file)
    assert seen is not None
    for key, value in NASTY.items():
        assert seen[key.encode()] == value.encode()
        assert seen[f"F_{key}".encode()] == value.encode()
    assert not Path("/tmp/chassis-owned-ssh").exists()


# -- names -----------------------------------------------------------------------------


def shell_inert(name: str) -> bool:
    return (
        shlex.quote(name) == name
        and not name.startswith("-")
        and "/" not in name
        and name not in (".", "..")
    )


@settings(max_examples=500)
@given(any_text)
@example("api;id")
@example("$(id)")
@example("api\n")
@example("../etc")
@example("-rf")
@example("a b")
@example("ok.name-1_x")
def test_a_name_is_refused_or_inert(name: str) -> None:
    for kind in ("component", "host", "app", "environment", "label", "env"):
        problem = name_problem(kind, name)
        if problem is None:
            assert shell_inert(name), (kind, name)
            assert 1 <= len(name) <= 128
        else:
            assert "\n" not in problem and repr(name) in problem
    if name_problem("component", name) is not None:
        with pytest.raises(ValueError):
            check_component(name)
        with pytest.raises(ValueError):
            unit_name("chassis", name, "r1")


def stack_with(**names: str) -> dict[str, object]:
    app, component, env, host, group, label = (
        names.get(k, d)
        for k, d in (
            ("app", "shop"),
            ("component", "api"),
            ("env", "dev"),
            ("host", "dev-1"),
            ("group", "all"),
            ("label", "role"),
        )
    )
    return {
        "app": {"name": app},
        "components": {component: {"command": "true", "env": {names.get("key", "K"): "v"}}},
        "profiles": {"p": {"groups": {group: {"components": [component]}}}},
        "environments": {
            env: {
                "hosts": [
                    {
                        "name": host,
                        "connector": "ssh",
                        "address": names.get("address", "10.0.0.1"),
                        "user": "deploy",
                        "root": "/srv/x",
                        "labels": {label: "batch"},
                    }
                ]
            }
        },
        "releases": {
            names.get("release", "v1"): {
                "artifact": "x.tar.gz",
                "config": {names.get("config", "GREETING"): "hello"},
            }
        },
    }


@settings(max_examples=200)
@given(st.sampled_from(["app", "component", "env", "host", "group", "label", "release"]), any_text)
@example("component", "api;id")
@example("host", "h\n1")
@example("app", "x" * 64)
def test_the_stack_file_refuses_every_name_outside_its_rule(kind: str, name: str) -> None:
    raw = stack_with(**{kind: name})
    if NAME.match(name):
        validate_stack(raw, Path("/ws/chassis.toml"))
        return
    with pytest.raises(StackError) as caught:
        validate_stack(raw, Path("/ws/chassis.toml"))
    message = str(caught.value)
    assert "\n" not in message and "expected 1-63 letters, digits" in message


@settings(max_examples=200)
@given(st.sampled_from(["key", "config"]), any_text)
@example("config", "X;id>/tmp/owned-$(hostname);Y")
@example("key", "COOKIE")
def test_the_stack_file_refuses_env_and_config_keys_outside_the_rule(kind: str, key: str) -> None:
    raw = stack_with(**{kind: key})
    if ENV_NAME.match(key) and kind == "key" and SECRET_KEY.search(key):
        # A valid name that reads like a secret's takes a reference, not a value.
        with pytest.raises(StackError, match=r"components\.api\.env\..*: looks like a secret"):
            validate_stack(raw, Path("/ws/chassis.toml"))
        return
    if ENV_NAME.match(key):
        validate_stack(raw, Path("/ws/chassis.toml"))
        return
    with pytest.raises(StackError) as caught:
        validate_stack(raw, Path("/ws/chassis.toml"))
    message = str(caught.value)
    assert "\n" not in message and "environment variable name" in message
    assert ("releases.v1.config" if kind == "config" else "components.api.env") in message


@pytest.mark.parametrize(
    "address", ["h1 ssh-ed25519 AAAA", "h1\n[evil]:22", "-oProxyCommand=id", "a,b", "#x"]
)
def test_the_stack_file_refuses_addresses_that_would_rewrite_known_hosts(address: str) -> None:
    with pytest.raises(StackError, match="address: expected a host name or IP address"):
        validate_stack(stack_with(address=address), Path("/ws/chassis.toml"))


@settings(max_examples=200)
@given(names, names)
def test_unit_names_and_systemctl_commands_carry_names_as_single_words(
    component: str, app: str
) -> None:
    prefix = f"chassis-{app}"
    unit = unit_name(prefix, component, "0123456789abcdef" * 4)
    assert re.fullmatch(r"[A-Za-z0-9:_.@-]+", unit) and len(unit) <= 255
    old = f"{prefix}-{component}@old.service"
    listed = [Row(unit, "loaded", "active", "running"), Row(old, "loaded", "active", "running")]
    commands = [
        UnitList.command(prefix, component),
        verify_command(unit),
        *start_commands(unit, listed),
        *stop_commands(listed),
        *failed_start_commands(unit),
    ]
    verbs = {"list-units", "is-active", "restart", "enable", "disable", "stop", "show"}
    units = {unit, old, unit_pattern(prefix, component)}
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "systemctl"
        for word in words[1:]:
            assert word.startswith("--") or word in verbs or word in units, (command, word)


def systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        if IN_CI:
            pytest.fail("CI=true but systemd-analyze is missing")
        pytest.skip("systemd-analyze is missing (install systemd)")
    return binary


def test_units_for_edge_names_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    binary = systemd_analyze()
    paths = []
    for app, component in [("a", "0"), ("x" * 63, "y" * 63), ("a.b-c_d", "e.f-g_h"), ("9", "z.")]:
        spec = ProcessSpec(
            component=component,
            release_id="0123456789abcdef" * 4,
            command="exec ./run",
            workdir="/srv/app/releases/0123456789abcdef",
            env={"K": "v"},
            env_file="/srv/app/releases/0123456789abcdef/.env." + component,
            root="/srv/app",
        )
        path = tmp_path / unit_name(f"chassis-{app}", component, spec.release_id)
        path.write_text(render_unit(spec, unit_prefix=f"chassis-{app}"))
        paths.append(path)
    result = subprocess.run(
        [binary, "verify", "--man=no", "--generators=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names)
@example("a.b-c_d")
@example("x" * 63)
def test_real_start_stop_with_any_valid_name_stays_in_its_paths(
    tmp_path: Path, local_root: Path, component: str
) -> None:
    before = tree(tmp_path)
    seen = run_direct(LocalConnector("local-1"), local_root, {"K": "v"}, None, component=component)
    assert seen is not None and seen[b"K"] == b"v"
    after = tree(tmp_path)
    new = {p for p in after - before if not p.startswith("root/releases/r1/env.out")}
    assert new <= {"root/logs/" + component + ".log"}, new
    log = (local_root / "logs" / f"{component}.log").read_text()
    assert f"start {component} release r1" in log


# -- input: the CLI and the guide's examples -----------------------------------------


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["api;id"], "host name 'api;id': expected 1-63 letters"),
        (["h1", "--env", "prod$(id)"], "environment name 'prod$(id)': expected 1-63"),
        (["h1", "--label", "role;x=batch"], "host h1: label name 'role;x': expected 1-63"),
        (
            ["h1", "--connector", "ssh", "--address", "10.0.0.1 ssh-ed25519 AAAA", "--user", "u"],
            "host h1: address '10.0.0.1 ssh-ed25519 AAAA': expected a host name or IP",
        ),
    ],
)
def test_host_add_refuses_names_outside_their_rule(
    run: Runner, workspace: Path, args: list[str], why: str
) -> None:
    name, *rest = args
    if "--connector" not in rest:
        rest = [*rest, "--connector", "local"]
    result = run("host", "add", name, "--root", "/srv/x", *rest)
    assert result.exit_code == 3, result.stderr
    assert result.stderr.count("\n") == 1 and why in result.stderr
    assert json.loads(run.ok("host", "list", "--json").stdout) == []


def test_the_guides_error_lines_are_what_chassis_prints(tmp_path: Path) -> None:
    guide = (Path(__file__).resolve().parents[2] / "guides" / "deployment.md").read_text()
    section = guide[guide.index("### Names and environment variables") :]
    lines = re.findall(r"```\n(.*?)```", section, re.DOTALL)[0].splitlines()
    raw = stack_with(component="api;id")
    with pytest.raises(StackError) as caught:
        validate_stack(raw, Path("/srv/shop/chassis.toml"))
    assert lines[0] == f"chassis: error: {caught.value}"
    with pytest.raises(ReleaseError) as refused:
        check_release_input("v1", {"X;id>/tmp/owned-$(hostname);Y": "1"})
    assert lines[1] == f"chassis: error: {refused.value}"
