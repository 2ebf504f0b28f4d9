"""Reading what components wrote (``chassis logs``): the last lines of
``logs/<component>.log`` on each host the ledger records them on, and
following them. Read-only: nothing is recorded, nothing on a host changes.

Both supervisors append a component's output to that file (systemd units
write there too), so one reader serves local, SSH, direct and systemd hosts.
Following polls each file by byte offset through the host's connector (one
connection per host), so it works the same over SSH.
"""

from __future__ import annotations

import queue
import shlex
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError
from adapters.supervisors.base import log_path
from chassis.connect import connector_for
from chassis.errors import ChassisError, NotFound
from chassis.hosts import get_host, resolve_root
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.installations import Installation

MAX_CHUNK = 1 << 20
"""At most this many new bytes per file per poll."""
_WAKE_S = 0.2
"""How often a follow looks for Ctrl-C (and ``stop``) while no line comes."""


@dataclass
class LogSource:
    host: str
    component: str
    path: str
    connector: Connector
    offset: int = 0
    partial: str = field(default="", repr=False)


def sources(
    ledger: Ledger,
    ws: Workspace,
    *,
    app: str,
    environment: str,
    host: str | None = None,
    component: str | None = None,
) -> list[LogSource]:
    """One source per (host, component) the ledger records active, filtered."""
    installation = ledger.find(
        Installation, Installation.id_for(Installation.key(app, environment))
    )
    if installation is None or not installation.hosts:
        raise NotFound(f"nothing of {app} is deployed in {environment}")
    if host is not None and host not in installation.hosts:
        raise NotFound(
            f"{app}/{environment} runs nothing on host {host!r} "
            f"(hosts: {', '.join(sorted(installation.hosts))})"
        )
    found: list[LogSource] = []
    connectors: dict[str, Connector] = {}
    for name, entry in sorted(installation.hosts.items()):
        if host is not None and name != host:
            continue
        components = [c for c in entry["components"] if component in (None, c)]
        if not components:
            continue
        known = get_host(ledger, name)
        if name not in connectors:
            connectors[name] = connector_for(known, ws)
        root = resolve_root(known, ws.root)
        for c in sorted(components):
            found.append(LogSource(name, c, log_path(root, c), connectors[name]))
    if not found:
        running = sorted({c for e in installation.hosts.values() for c in e["components"]})
        raise NotFound(
            f"{app}/{environment} runs no component {component!r} "
            f"(components: {', '.join(running)})"
        )
    return found


def close(found: list[LogSource]) -> None:
    for connector in {id(s.connector): s.connector for s in found}.values():
        connector.close()


def tail(source: LogSource, lines: int) -> list[str]:
    """The last ``lines`` lines, and the file's size (where following starts)."""
    path = shlex.quote(source.path)
    result = source.connector.run(
        f"tail -n {int(lines)} -- {path} 2>/dev/null; printf '\\n%s' \"$(wc -c < {path} "
        '2>/dev/null || echo 0)"',
        timeout=30,
    )
    text, _, size = result.stdout.rpartition("\n")
    source.offset = int(size.strip() or 0)
    return [line for line in text.splitlines() if line] if lines else []


def poll(source: LogSource) -> list[str]:
    """Complete lines written since the last look (a file that shrank, say
    rotated, is read again from its start)."""
    path = shlex.quote(source.path)
    result = source.connector.run(
        f"size=$(wc -c < {path} 2>/dev/null || echo 0); echo $size; "
        f"if [ $size -gt {source.offset} ]; then tail -c +{source.offset + 1} -- {path} "
        f"| head -c {MAX_CHUNK}; elif [ $size -lt {source.offset} ]; then head -c {MAX_CHUNK} "
        f"-- {path}; fi",
        timeout=30,
    )
    size_line, _, data = result.stdout.partition("\n")
    size = int(size_line.strip() or 0)
    if size < source.offset:
        source.offset, source.partial = 0, ""
    source.offset += len(data.encode())
    text = source.partial + data
    *complete, source.partial = text.split("\n")
    return complete


def follow(
    found: list[LogSource],
    emit: Callable[[LogSource, str], None],
    *,
    interval_s: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Emit new lines from every source until ``stop()`` (or Ctrl-C).

    Each source is polled by a daemon thread of its own, and this thread
    only emits what they queue, waking at least every ``_WAKE_S``: Ctrl-C
    ends it at once, even while a poll waits on a slow host (a thread pool
    would hold the exit until that poll's timeout), and the pollers die
    with the process."""
    lines: queue.Queue[tuple[LogSource, list[str]]] = queue.Queue()
    done = threading.Event()

    def poller(source: LogSource) -> None:
        while not done.is_set():
            try:
                new = _safe_poll(source)
            except Exception as e:  # e.g. a poll racing the close at exit
                if done.is_set():
                    return
                new = [f"[chassis: cannot read {source.path} on {source.host}: {e}]"]
            lines.put((source, new))
            done.wait(interval_s)

    for source in found:
        threading.Thread(target=poller, args=(source,), daemon=True).start()
    try:
        while not stop():
            try:
                source, new = lines.get(timeout=_WAKE_S)
            except queue.Empty:
                continue
            for line in new:
                emit(source, line)
    finally:
        done.set()


def _safe_poll(source: LogSource) -> list[str]:
    try:
        return poll(source)
    except ConnectorError as e:
        return [f"[chassis: cannot read {source.path} on {source.host}: {e.diagnostics()}]"]


def read(found: list[LogSource], lines: int) -> Iterator[tuple[LogSource, list[str]]]:
    """The last ``lines`` of each source, read in parallel."""

    def one(source: LogSource) -> list[str]:
        try:
            return tail(source, lines)
        except ConnectorError as e:
            raise ChassisError(
                f"{source.host}: cannot read {source.path}: {e.diagnostics()}"
            ) from e

    with ThreadPoolExecutor(max_workers=min(16, len(found))) as pool:
        yield from zip(found, pool.map(one, found), strict=True)
