"""A frozen SSH host fails within a bounded time instead of hanging forever.

The host is frozen for real: the test sshd's session process (the one that
holds our connection's socket) gets SIGSTOP, so the TCP connection stays up
and the kernel keeps accepting bytes, but nothing ever answers, which is what
a hung machine or a dead link looks like. Each operation runs in a thread with
a deadline, so the old behaviour (waiting forever) fails the test instead of
hanging it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.connectors.ssh import SSHConnector
from adapters.errors import ConnectorError, ConnectorTimeout
from tests.sshd import SSHTestHost

DEADLINE_S = 30.0
"""How long the test waits for an answer: far above the configured bounds."""


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc, deepest last)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def serving(host: SSHTestHost, connector: SSHConnector) -> list[int]:
    """The sshd processes serving ``connector``'s connection (one session
    process per connection, whatever its channels), found from a shell it
    runs. Only processes below this test's own sshd listener qualify."""
    listener = int((host.config_dir / "sshd.pid").read_text())
    session = int(connector.run("echo $PPID", check=True).stdout)
    pids = [session]
    per_connection = _parent(session)
    if per_connection != listener:  # privilege separation: the monitor above it
        pids.insert(0, per_connection)
    assert all(pid in _descendants(listener) for pid in pids)
    return pids


@contextmanager
def freeze(pids: list[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` (the listener keeps running, so a new connection is
    served); they are killed afterwards."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@contextmanager
def frozen(host: SSHTestHost, connector: SSHConnector) -> Iterator[None]:
    with freeze(serving(host, connector)):
        yield


def within(seconds: float, action: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Run ``action`` in a thread; fail the test if it is still blocked after ``seconds``."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            action()
        except BaseException as e:  # handed to the test
            outcome.append(e)
        else:
            outcome.append(None)

    started = time.monotonic()
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"still blocked on a frozen host after {seconds:g}s")
    return outcome[0], time.monotonic() - started


def test_a_frozen_host_fails_a_command_within_the_keepalive_bound(
    ssh_host: SSHTestHost,
) -> None:
    settings = ssh_host.settings(keepalive_interval=0.5, keepalive_count_max=2, io_timeout=60)
    with SSHConnector(settings) as c, frozen(ssh_host, c):
        error, took = within(DEADLINE_S, lambda: c.run("echo never", timeout=120))
    assert isinstance(error, ConnectorTimeout), error
    assert "stopped answering" in str(error) and "echo never" in str(error)
    assert str(error).startswith(f"host {ssh_host.name} ({ssh_host.where}):")
    assert took < 10, took
    with SSHConnector(settings) as again:  # the host's sshd still serves new sessions
        assert again.run("echo back", check=True).stdout == "back\n"


def test_a_frozen_host_fails_a_long_command_long_before_its_own_timeout(
    ssh_host: SSHTestHost,
) -> None:
    """Unpacking may take minutes (its timeout is 600 s); a freeze in the
    middle is noticed by the keepalive, not by that timeout."""
    settings = ssh_host.settings(keepalive_interval=0.5, keepalive_count_max=2)
    with SSHConnector(settings) as c:
        pids = serving(ssh_host, c)
        result: list[object] = []
        job = threading.Thread(
            target=lambda: result.append(_catch(lambda: c.run("sleep 300", timeout=600))),
            daemon=True,
        )
        job.start()
        time.sleep(0.5)
        with freeze(pids):
            job.join(DEADLINE_S)
            assert not job.is_alive(), "still blocked on a frozen host"
    assert isinstance(result[0], ConnectorTimeout), result
    assert "stopped answering" in str(result[0])


def test_a_frozen_host_fails_an_upload_at_its_progress_deadline(
    ssh_host: SSHTestHost,
) -> None:
    """With keepalives rare, the transfer's own deadline (no progress for
    io_timeout) is what fails: chunk after chunk must get through."""
    settings = ssh_host.settings(keepalive_interval=60, io_timeout=1)
    data = os.urandom(16 * 1024 * 1024)  # far more than the SSH window and socket buffers
    with SSHConnector(settings) as c:
        c.put_bytes(b"warm", f"{ssh_host.root}/warm", mode=0o644)  # the SFTP session is open
        with frozen(ssh_host, c):
            error, took = within(
                DEADLINE_S, lambda: c.put_bytes(data, f"{ssh_host.root}/big", mode=0o644)
            )
    assert isinstance(error, ConnectorTimeout), error
    assert "no progress for 1s during put" in str(error), error
    assert took < 10, took
    with SSHConnector(settings) as again:
        again.put_bytes(b"x", f"{ssh_host.root}/after", mode=0o644)
        assert again.read_bytes(f"{ssh_host.root}/after") == b"x"


def test_a_frozen_host_fails_reads_and_stats(ssh_host: SSHTestHost) -> None:
    settings = ssh_host.settings(keepalive_interval=0.5, keepalive_count_max=2, io_timeout=60)
    path = f"{ssh_host.root}/f"
    with SSHConnector(settings) as c:
        c.put_bytes(b"content", path, mode=0o644)
        with frozen(ssh_host, c):
            error, took = within(DEADLINE_S, lambda: c.read_bytes(path))
    assert isinstance(error, ConnectorTimeout) and f"read {path}" in str(error), error
    assert took < 10, took


def test_connecting_to_a_host_that_never_speaks_is_bounded(
    ssh_host: SSHTestHost, silent_listener: tuple[str, int]
) -> None:
    address, port = silent_listener
    settings = ssh_host.settings(name="mute", address=address, port=port, connect_timeout=1)
    error, took = within(DEADLINE_S, lambda: SSHConnector(settings).run("true"))
    assert isinstance(error, ConnectorError) and "1s" in str(error), error
    assert took < 10, took


def _catch(action: Callable[[], object]) -> object:
    try:
        return action()
    except BaseException as e:  # handed to the test
        return e


# -- the setting: ssh_timeout_ms per environment, overridden per host ---------------


def _workspace(tmp_path: Path, env_timeout: int | None, host_timeout: int | None) -> Any:
    import tomllib

    from chassis.stack.example import example_stack
    from chassis.stack.spec import validate_stack
    from chassis.workspace import Workspace

    raw = tomllib.loads(example_stack("shop"))
    prod = raw["environments"]["prod"]
    if env_timeout is not None:
        prod["ssh_timeout_ms"] = env_timeout
    if host_timeout is not None:
        prod["hosts"][0]["ssh_timeout_ms"] = host_timeout
    validate_stack(raw, tmp_path / "chassis.toml")
    text = example_stack("shop").replace(
        "[environments.prod]\n",
        "[environments.prod]\n"
        + (f"ssh_timeout_ms = {env_timeout}\n" if env_timeout is not None else ""),
    )
    (tmp_path / "chassis.toml").write_text(text)
    (tmp_path / ".chassis").mkdir()
    return Workspace(tmp_path), raw


def test_ssh_timeout_comes_from_the_host_else_its_environment(tmp_path: Path) -> None:
    from chassis.connect import connector_from_settings, ssh_timeout_s
    from chassis.hosts import settings_from_spec
    from chassis.stack.spec import validate_stack

    ws, raw = _workspace(tmp_path, 4000, None)
    stack = validate_stack(raw, ws.stack_file)
    first, second = stack.environment("prod").hosts[:2]
    assert ssh_timeout_s(ws, first.name, "prod") == 4.0
    connector = connector_from_settings(first.name, settings_from_spec("prod", first), ws)
    assert isinstance(connector, SSHConnector)
    s = connector.settings
    assert (s.connect_timeout, s.io_timeout, s.silence_limit) == (4.0, 4.0, 4.0)
    assert s.keepalive_interval == pytest.approx(4 / 3)
    assert ssh_timeout_s(ws, "no-such-host", "dev") is None

    text = ws.stack_file.read_text()
    ws.stack_file.write_text(
        text.replace(f'name = "{first.name}",', f'name = "{first.name}", ssh_timeout_ms = 60000,')
    )
    assert ssh_timeout_s(ws, first.name, "prod") == 60.0
    assert ssh_timeout_s(ws, second.name, "prod") == 4.0
    long = connector_from_settings(first.name, settings_from_spec("prod", first), ws)
    assert isinstance(long, SSHConnector)
    assert long.settings.connect_timeout == 10.0, "connecting stays bounded by 10 s"
    assert long.settings.io_timeout == 60.0


def test_without_the_setting_a_frozen_host_fails_within_a_minute(tmp_path: Path) -> None:
    from chassis.connect import connector_from_settings
    from chassis.hosts import settings_from_spec
    from chassis.stack.spec import validate_stack

    ws, raw = _workspace(tmp_path, None, None)
    host = validate_stack(raw, ws.stack_file).environment("prod").hosts[0]
    connector = connector_from_settings(host.name, settings_from_spec("prod", host), ws)
    assert isinstance(connector, SSHConnector)
    s = connector.settings
    assert s.silence_limit + s.keepalive_interval <= 60 and s.io_timeout <= 60
    assert s.connect_timeout <= 10


@pytest.mark.parametrize(("env_timeout", "host_timeout"), [(50, None), (None, 600_001)])
def test_ssh_timeout_out_of_range_is_a_stack_error(
    tmp_path: Path, env_timeout: int | None, host_timeout: int | None
) -> None:
    from chassis.stack.spec import StackError

    with pytest.raises(StackError) as caught:
        _workspace(tmp_path, env_timeout, host_timeout)
    where = "environments.prod" if env_timeout is not None else "environments.prod.hosts[0]"
    assert f"{where}.ssh_timeout_ms: expected 100-600000, found" in str(caught.value)
