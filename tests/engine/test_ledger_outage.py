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
from ledger.releases import release_dir_name
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY

REPO = Path(__file__).resolve().parents[2]


class Forwarder:
    """A TCP forwarder to ``target``; ``cut()`` drops every connection and
    stops listening, as a database host that went away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
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
