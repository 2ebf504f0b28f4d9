"""The ledger goes away in the middle of a deploy: the hosts are left as the
ledger last recorded them, and the error names ``chassis recover``.

The shared PostgreSQL server is never stopped: the deploy reaches it through
a TCP forwarder this test owns, and "the ledger goes down" is the forwarder
closing every connection and refusing new ones while the deploy runs. The
test itself reads the ledger directly, as recover does once it is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from ledger.errors import StorageError
from ledger.keys import KeyPair
from ledger.postgres import RECORDER_ATTEMPTS, connection_options, pool_wait
from ledger.releases import release_dir_name
from ledger.storage import POSTGRES_CONNECT_TIMEOUT_S, StorageConfig, open_ledger
from ledger.trust import Trust
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


class Forwarder:
    """A TCP forwarder to ``target``; ``cut()`` drops every connection and
    stops listening, as a database host that went away."""

    def __init__(self, target: tuple[str, int], *, accept_delay_s: float = 0.0) -> None:
        self.target = target
        self.accept_delay_s = accept_delay_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            time.sleep(self.accept_delay_s)  # a server slow to take a connection
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with contextlib.suppress(OSError):  # wakes accept(): close() alone does not
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.fixture
def on_postgres(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The workspace's ledger is PostgreSQL (requested before ``shop``)."""
    monkeypatch.setenv("CHASSIS_LEDGER", postgres_url)
    return postgres_url


@pytest.fixture
def forwarder(on_postgres: str) -> Iterator[Forwarder]:
    parts = urlsplit(on_postgres)
    proxy = Forwarder((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield proxy
    proxy.cut()


def through(url: str, proxy: Forwarder) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"{netloc[0]}@127.0.0.1:{proxy.port}" if len(netloc) == 2 else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=host))


def on_host(shop: Path, host: str) -> dict[str, str | None]:
    """What runs on a local host: component → release id, and ``current``."""
    root = shop / ".chassis" / "hosts" / host
    supervisor = DirectSupervisor(LocalConnector(host), str(root))
    found: dict[str, str | None] = {}
    for component in ("gateway", "api", "worker"):
        state = supervisor.state(component)
        if state.running:
            found[component] = state.release_id
    found["current"] = (root / "current").resolve().name if (root / "current").exists() else None
    return found


@pytest.mark.postgres
def test_ledger_lost_mid_deploy_leaves_hosts_as_recorded_and_names_recover(
    on_postgres: str, forwarder: Forwarder, shop: Path, run: Runner
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    releases = {
        r["label"]: r["release_id"] for r in json.loads(run.ok("release", "list", "--json").stdout)
    }
    dev2 = shop / ".chassis" / "hosts" / "dev-2" / "releases"
    v2_dir = release_dir_name(releases["v2"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHASSIS_LEDGER": through(on_postgres, forwarder)}
    deploy = subprocess.Popen(
        [sys.executable, "-m", "chassis", *DEPLOY, "--release", "v2", "--max-parallel", "1"],
        cwd=shop,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    # One host at a time: dev-1 is deployed and recorded active when dev-2 starts.
    while not any(name.startswith(v2_dir) for name in os.listdir(dev2)):
        assert deploy.poll() is None, deploy.communicate()
        assert time.monotonic() - started < 60, "the deploy never reached dev-2"
        time.sleep(0.005)
    forwarder.cut()
    _, err = deploy.communicate(timeout=240)
    assert deploy.returncode == 4, err
    (message,) = [line for line in err.splitlines() if line.startswith("chassis: error:")]
    assert "ledger became unreachable" in message, err
    assert "chassis recover shop --env dev" in message, err
    assert "completes the operation if every host runs its release" in message, err
    assert "back on the release it ran before" in message, err
    assert "dev-1 keeps v2 (recorded active)" in message, err
    assert "dev-2 back on v1" in message, err

    # Every host runs what the ledger says it runs, though revision 2 is unfinished.
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["lease"] is not None and history["lease"]["revision"] == 2
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    recorded = {r["host"]: r["release_id"] for r in rows}
    assert recorded == {"dev-1": releases["v2"], "dev-2": releases["v1"], "dev-3": releases["v1"]}
    for row in rows:
        found = on_host(shop, row["host"])
        assert found[row["component"]] == row["release_id"], (row, found)
        assert found["current"] == release_dir_name(row["release_id"]), (row, found)

    outcome = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert outcome["outcome"] == "restored", outcome
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    assert {r["label"] for r in rows} == {"v1"}
    for row in rows:
        assert on_host(shop, row["host"])[row["component"]] == row["release_id"]
    assert json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)["lease"] is None
    run.ok("ledger", "verify")


@pytest.mark.postgres
def test_a_server_slow_to_take_connections_still_opens_the_ledger(
    postgres_url: str, root_key: KeyPair
) -> None:
    """Each new connection takes longer than one try's pool wait (0.5 s),
    as on a loaded machine: the ledger opens and reads all the same. Before,
    the pool's first connection was not ready in time for the reads that open
    the ledger, and the command failed with "cannot open ledger"."""
    created = open_ledger(StorageConfig.from_url(postgres_url), root_key, create=True)
    created.append(
        Trust.establish(
            keyid=root_key.keyid, name="root", public_key=root_key.public_key, ledger_name="t"
        )
    )
    created.close()
    parts = urlsplit(postgres_url)
    slow = Forwarder((parts.hostname or "127.0.0.1", parts.port or 5432), accept_delay_s=1.0)
    try:
        assert pool_wait(POSTGRES_CONNECT_TIMEOUT_S) < slow.accept_delay_s
        ledger = open_ledger(StorageConfig.from_url(through(postgres_url, slow)), root_key)
        try:
            assert ledger.load(Trust, Trust.ID).version == 1
        finally:
            ledger.close()
    finally:
        slow.cut()


@pytest.mark.postgres
def test_a_command_opens_two_server_connections_at_most(
    on_postgres: str, forwarder: Forwarder, shop: Path, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection is a process the server forks and sets up. A read
    command used to open nine (a pool of five, filled in the background,
    and three of its own); now the pre-flight check and one pooled
    connection, which the views also use once their table exists."""
    run.ok(*DEPLOY, "--release", "v1")
    run.ok("status")  # the first read of a view creates its table (a DDL connection)
    monkeypatch.setenv("CHASSIS_LEDGER", through(on_postgres, forwarder))
    for command in (("status", "--json"), ("history", "shop", "--env", "dev", "--json")):
        before = len(forwarder.sockets)
        run.ok(*command)
        assert (len(forwarder.sockets) - before) // 2 <= 2, command


# Bounded waits (issue 12): the driver retries each statement ten times; each
# try used to wait 5 s for a connection, so an outage took up to ~45 s to
# surface. The bound is the URL's connect_timeout; timings are not asserted,
# what reaches the driver and the pool is.


def test_connect_timeout_is_read_from_the_url_and_checked() -> None:
    base = "postgresql://chassis@db.example:5432/ledger?schema=shop"
    assert StorageConfig.from_url(base).connect_timeout == POSTGRES_CONNECT_TIMEOUT_S == 5
    config = StorageConfig.from_url(f"{base}&connect_timeout=3")
    assert (config.schema, config.connect_timeout) == ("shop", 3)
    assert config.eventsourcing_env()["POSTGRES_CONNECT_TIMEOUT"] == "3"
    for bad in ("0", "1", "301", "2.5", "soon", "-3", "²"):
        with pytest.raises(StorageError) as caught:
            StorageConfig.from_url(f"{base}&connect_timeout={bad}")
        assert str(caught.value) == (
            f"ledger URL connect_timeout {bad!r}: expected whole seconds 2-300"
        )


def test_bounds_are_pool_waits_and_libpq_options() -> None:
    options = connection_options(4)
    assert options["connect_timeout"] == 4 and options["tcp_user_timeout"] == 4000
    assert options["keepalives"] == 1 and options["keepalives_idle"] == 4
    # The tries together wait about connect_timeout for a pooled connection.
    assert pool_wait(5) * RECORDER_ATTEMPTS == pytest.approx(5)
    assert pool_wait(2) >= 0.2


@pytest.mark.postgres
def test_the_configured_timeout_reaches_every_connection(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    direct: list[dict[str, object]] = []
    connect = psycopg.connect

    def recording(*args: object, **kwargs: object) -> object:
        direct.append(kwargs)
        return connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(psycopg, "connect", recording)
    config = StorageConfig.from_url(f"{postgres_url}&connect_timeout=3")
    ledger = open_ledger(config, None, create=True)
    try:
        pool = ledger.recorder.datastore.pool  # type: ignore[attr-defined]
        assert pool.timeout == pool_wait(3)
        assert {k: pool.kwargs[k] for k in connection_options(3)} == connection_options(3)
        list(ledger.records())  # the pool's connections work with them
        with pool.connection() as conn:  # and libpq has them
            used = conn.info.get_parameters()
        assert {k: used[k] for k in connection_options(3)} == {
            k: str(v) for k, v in connection_options(3).items()
        }
    finally:
        ledger.close()
    assert direct, "the preflight connects directly"
    for kwargs in direct:
        assert {k: kwargs[k] for k in connection_options(3)} == connection_options(3)


@pytest.mark.postgres
def test_a_vanished_server_surfaces_as_a_storage_error(
    postgres_url: str, forwarder: Forwarder
) -> None:
    """Every connection of an open ledger drops and new ones are refused
    (the forwarder's cut): reading fails with the storage error (exit 4)
    and returns at all (no timing is asserted beyond a generous ceiling)."""
    config = StorageConfig.from_url(through(postgres_url, forwarder))
    ledger = open_ledger(config, None, create=True)
    try:
        assert list(ledger.records()) == []
        forwarder.cut()
        outcome: list[BaseException | None] = []

        def read() -> None:
            try:
                list(ledger.records())
            except BaseException as e:  # what the reader saw, checked below
                outcome.append(e)
            else:
                outcome.append(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=60)
        assert outcome, "the read was still waiting after 60 s"
        assert isinstance(outcome[0], StorageError) and outcome[0].exit_code == 4, outcome
    finally:
        ledger.close()
