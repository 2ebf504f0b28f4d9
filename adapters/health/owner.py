"""Who answers a health probe: the process we started, or a stranger.

An ``http`` or ``tcp`` probe reaches whatever listens on the port. A stray
server holding that port once passed the gate for a release whose own
process had died with "Address already in use", so an answer alone is not
health. :data:`OWNER_SCRIPT` runs on the host (``Connector.run_python``, standard
library only, like :mod:`adapters.facts.probe`) and reports, in one JSON
line read from ``/proc``:

- for each *root* (a pid and, when known, its start time in clock ticks from
  ``/proc/<pid>/stat``): whether it still exists as that process (a reused
  pid or a zombie is not alive);
- for each listening TCP socket on the asked ports that a connection to the
  probed address can reach (``/proc/net/tcp`` and ``tcp6``): whether it
  belongs to a root, its process group or session, or a descendant
  (``/proc/<pid>/fd``), and otherwise which processes hold it, with their
  command lines.

A user may not read the descriptors of our own processes (systemd units run
as root while the SSH user drives ``sudo -n systemctl``). A socket no
readable process holds then counts as ours when its owner uid is the uid of
such an unreadable process of ours (``by_uid``): weaker, since a stranger of
the same uid passes, but liveness is still checked and a stranger this user
*can* see is still named.

A look is cheap where the answer is plain: listeners come from the kernel's
``NETLINK_SOCK_DIAG`` (listening sockets only; ``/proc/net/tcp``, the
fallback, lists every connection, thousands in ``TIME_WAIT`` on a busy host),
and the roots' subtrees from their ``/proc/<pid>/task/*/children`` lists. That
answer stands only when it is complete by what it shows (every live root has
a child, every listener is held in the subtrees); otherwise every process is
scanned as before, so groups, sessions and strangers are decided as always.
A look is a ``quick`` program (:meth:`Connector.run_python`): on a local host
it runs inside the fork server, without a fork of its own.

The probed address counts when it is one of the host's own (the script can
bind it): then only sockets bound to it or to a wildcard answer there.
Otherwise (a DNS name, an address behind NAT) every listener on the port
counts, which errs on the side of naming a stranger.

:class:`ProcessWatch` turns that into a gate guard (the process must live
for the whole gate, and own the socket it is probed on);
:func:`port_conflicts` is the check before a start (anything but our own
processes on a declared port is a named failure).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.connectors.base import Connector
from adapters.errors import one_line
from adapters.health.gate import ProcessGone
from adapters.health.probes import ProbeResult

__all__ = [
    "OWNER_SCRIPT",
    "Holder",
    "Listener",
    "OwnerUnknown",
    "Ownership",
    "ProcessWatch",
    "Root",
    "observe",
    "owner_args",
    "port_conflicts",
]

OWNER_TIMEOUT_S = 15.0
LOOK_EVERY_S = 0.5
"""At most this long between looks while attempts fail (see :class:`ProcessWatch`)."""
_CMDLINE_LIMIT = 160

# Runs on the host: argv[1] is JSON {"roots": [[pid, start|null]...],
# "ports": [...], "address": "..."}; prints one JSON line. Python 3.6+ and
# /proc only. A holder's command line is cut short: it goes into messages.
OWNER_SCRIPT = r"""
import json, os, socket, struct, sys

MAPPED = b"\0" * 10 + b"\xff\xff"
WILD = (MAPPED + b"\0" * 4, b"\0" * 16)

def stat(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rpartition(") ")[2].split()
    except (OSError, ValueError):
        return None
    if len(rest) < 20:
        return None
    return rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19])

def pids():
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]

def sockets(pid):
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    found = set()
    for name in names:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found

def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            raw = f.read(4096)
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")[:LIMIT]

def target(address):
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, address)
        except (OSError, ValueError):
            continue
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.bind((address, 0))
            finally:
                s.close()
        except OSError:
            return None
        return MAPPED + packed if family == socket.AF_INET else packed
    return None

def listeners(ports, want):
    try:
        table = listening_diag()
    except (OSError, ValueError, struct.error):
        table = listening_proc()
    found = []
    for raw, port, inode, uid in table:
        if port not in ports:
            continue
        if want is not None and raw != want and raw not in WILD:
            continue
        if raw.startswith(MAPPED):
            text = socket.inet_ntop(socket.AF_INET, raw[12:])
        else:
            text = socket.inet_ntop(socket.AF_INET6, raw)
        found.append({"address": text, "port": port, "inode": inode, "uid": uid})
    return found

def listening_diag():
    # NETLINK_SOCK_DIAG asks the kernel for listening TCP sockets only:
    # /proc/net/tcp lists every socket, TIME_WAIT included (thousands on a
    # busy host, milliseconds to read), to keep the few in state LISTEN.
    table = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as nl:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            # inet_diag_req_v2: family, protocol, ext, pad, states (1 << TCP_LISTEN), sockid
            request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << 10)
            request += b"\0" * 48
            # nlmsghdr: SOCK_DIAG_BY_FAMILY (20), NLM_F_REQUEST | NLM_F_DUMP
            nl.send(struct.pack("=IHHII", 16 + len(request), 20, 0x301, seq, 0) + request)
            done = False
            while not done:
                data = nl.recv(1 << 16)
                if not data:
                    raise OSError("sock_diag closed")
                at = 0
                while at + 16 <= len(data):
                    size, kind = struct.unpack_from("=IH", data, at)
                    if size < 16:
                        raise ValueError("sock_diag: short message")
                    if kind == 3:  # NLMSG_DONE
                        done = True
                        break
                    if kind == 2:  # NLMSG_ERROR
                        raise OSError("sock_diag refused")
                    body = at + 16
                    # inet_diag_msg: family, state, timer, retrans, sockid
                    # (sport, dport, src[16], dst[16], if, cookie), expires,
                    # rqueue, wqueue, uid, inode
                    port = struct.unpack_from("!H", data, body + 4)[0]
                    src = data[body + 8:body + 24]
                    uid, inode = struct.unpack_from("=II", data, body + 64)
                    raw = MAPPED + src[:4] if data[body] == socket.AF_INET else src
                    table.append((raw, port, inode, uid))
                    at += (size + 3) & ~3
    return table

def listening_proc():
    table = []
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":
                continue
            hexaddr, _, hexport = fields[1].partition(":")
            raw = b"".join(
                int(hexaddr[i:i + 8], 16).to_bytes(4, sys.byteorder)
                for i in range(0, len(hexaddr), 8)
            )
            if not v6:
                raw = MAPPED + raw
            table.append((raw, int(hexport, 16), int(fields[9]), int(fields[7])))
    return table

def children_of(pid):
    kids = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                kids.extend(int(n) for n in f.read().split())
    except (OSError, ValueError):
        return None
    return kids

def descendants(roots):
    # pid -> stat of the roots and what the kernel lists as their children,
    # down the tree: a few files instead of every process on the host. The
    # lists can omit a child while a sibling exits (proc_tid_children(5)),
    # so main() trusts what they show, never what they leave out.
    procs, todo = {}, []
    for pid, _ in roots:
        st = stat(pid)
        if st is not None:
            procs[pid] = st
            todo.append(pid)
    while todo:
        kids = children_of(todo.pop())
        if kids is None:
            return None
        for kid in kids:
            if kid not in procs:
                st = stat(kid)
                if st is not None:
                    procs[kid] = st
                    todo.append(kid)
    return procs

def everything():
    procs = {}
    for pid in pids():
        st = stat(pid)
        if st is not None:
            procs[pid] = st
    return procs

def family(procs, roots, whole):
    seen, alive = [], set()
    for pid, start in roots:
        st = procs.get(pid)
        ok = st is not None and st[0] not in ("Z", "X", "x") and start in (None, st[4])
        kids = [[p, k[4]] for p, k in procs.items() if k[1] == pid and k[0] not in "ZXx"]
        seen.append({"pid": pid, "alive": ok, "start": st[4] if st else None,
                     "state": st[0] if st else "", "kids": sorted(kids)})
        if ok:
            alive.add(pid)
    members = set(alive)
    if whole:
        members.update(p for p, st in procs.items() if st[2] in alive or st[3] in alive)
    children = {}
    for p, st in procs.items():
        children.setdefault(st[1], []).append(p)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    return seen, members

def held(members, inodes):
    holders, ours, blind = {}, set(), set()
    if not inodes:
        return holders, ours, blind  # no listener asked about: no descriptor to read
    for pid in members:
        found = sockets(pid)
        if found is None:
            try:
                blind.add(os.stat("/proc/%d" % pid).st_uid)
            except OSError:
                pass
            continue
        for inode in found & inodes:
            ours.add(inode)
            holders.setdefault(inode, []).append(pid)
    return holders, ours, blind

def main():
    args = json.loads(sys.argv[1])
    roots = [(int(p), s if s is None else int(s)) for p, s in args["roots"]]
    ports = set(args["ports"])
    found = listeners(ports, target(args["address"])) if ports else []
    inodes = set(l["inode"] for l in found)
    # First the roots' own subtrees. That answer stands when it is complete
    # by what it shows: every live root has a child to pin, and every
    # listener is held by one of them. Anything else (a root with no child
    # listed, a socket someone else may hold) is decided by the whole scan:
    # the roots' groups and sessions too, and every holder's name.
    procs = descendants(roots) if roots else {}
    if procs is not None:
        seen, members = family(procs, roots, False)
        holders, ours, blind = held(members, inodes)
        if all(r["kids"] or not r["alive"] for r in seen) and ours == inodes:
            report(found, seen, holders, ours, blind, 0)
            return
    procs = everything() if roots else {}
    seen, members = family(procs, roots, True)
    holders, ours, blind = held(members, inodes)
    hidden = 0
    missing = inodes - ours
    if missing:
        for pid in pids():
            if pid in members or pid == os.getpid():
                continue
            sockets_held = sockets(pid)
            if sockets_held is None:
                hidden += 1
                continue
            for inode in sockets_held & missing:
                holders.setdefault(inode, []).append(pid)
    report(found, seen, holders, ours, blind, hidden)

def report(found, seen, holders, ours, blind, hidden):
    for l in found:
        l["by_uid"] = (l["inode"] not in ours and l["inode"] not in holders
                       and l["uid"] in blind)
        l["ours"] = l["inode"] in ours or l["by_uid"]
        l["holders"] = [{"pid": p, "cmdline": cmdline(p)}
                        for p in sorted(holders.get(l["inode"], []))[:5]]
    print(json.dumps({"roots": seen, "listeners": found, "hidden": hidden}))

LIMIT = int(sys.argv[2])
main()
"""


class OwnerUnknown(Exception):
    """The host could not say who listens (no ``python3``, no ``/proc``, bad output)."""


@dataclass(frozen=True)
class Root:
    """One process we consider ours, as the host saw it."""

    pid: int
    alive: bool
    start: int | None
    state: str
    kids: tuple[tuple[int, int], ...] = ()
    """Its living children, as (pid, start): the command, under a wrapper."""


@dataclass(frozen=True)
class Holder:
    pid: int
    cmdline: str


@dataclass(frozen=True)
class Listener:
    """One listening socket on an asked port that the probed address reaches."""

    address: str
    port: int
    inode: int
    uid: int
    ours: bool
    holders: tuple[Holder, ...]
    by_uid: bool = False
    """Counted ours by its owner uid alone (our processes' descriptors were unreadable)."""

    def held_by(self, hidden: int) -> str:
        """``pid P (cmdline)``, or why no holder could be named."""
        if self.holders:
            first = self.holders[0]
            more = f" and {len(self.holders) - 1} more" if len(self.holders) > 1 else ""
            command = one_line(first.cmdline, limit=_CMDLINE_LIMIT) or "no command line"
            return f"pid {first.pid} ({command}){more}"
        if hidden:
            return (
                f"a process this user cannot inspect (socket of uid {self.uid}, inode {self.inode})"
            )
        return f"an unknown process (socket inode {self.inode})"


@dataclass(frozen=True)
class Ownership:
    """What :data:`OWNER_SCRIPT` reported."""

    roots: tuple[Root, ...]
    listeners: tuple[Listener, ...]
    hidden: int = 0
    """Processes whose descriptors this user could not read."""

    @staticmethod
    def parse(output: str) -> Ownership:
        try:
            raw: Any = json.loads(output.strip().splitlines()[-1])
            roots = tuple(
                Root(
                    pid=_int(r["pid"]),
                    alive=bool(r["alive"]),
                    start=None if r["start"] is None else _int(r["start"]),
                    state=str(r["state"]),
                    kids=tuple((_int(k[0]), _int(k[1])) for k in r["kids"]),
                )
                for r in raw["roots"]
            )
            listeners = tuple(
                Listener(
                    address=str(item["address"]),
                    port=_int(item["port"]),
                    inode=_int(item["inode"]),
                    uid=_int(item["uid"]),
                    ours=bool(item["ours"]),
                    holders=tuple(
                        Holder(_int(h["pid"]), str(h["cmdline"])) for h in item["holders"]
                    ),
                    by_uid=bool(item["by_uid"]),
                )
                for item in raw["listeners"]
            )
            return Ownership(roots, listeners, _int(raw["hidden"]))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise OwnerUnknown(f"unreadable answer {one_line(output, limit=120)!r}") from e

    def strangers(self) -> list[Listener]:
        return [listener for listener in self.listeners if not listener.ours]


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an int, not {value!r}")
    return value


def owner_args(
    roots: Iterable[tuple[int, int | None]], ports: Iterable[int], address: str
) -> list[str]:
    """The arguments :data:`OWNER_SCRIPT` takes (all data, one JSON word)."""
    args = {
        "roots": [[pid, start] for pid, start in roots],
        "ports": sorted(set(ports)),
        "address": address,
    }
    return [json.dumps(args, separators=(",", ":")), str(_CMDLINE_LIMIT)]


def observe(
    connector: Connector,
    roots: Sequence[tuple[int, int | None]],
    ports: Iterable[int],
    address: str,
    *,
    timeout: float = OWNER_TIMEOUT_S,
) -> Ownership:
    """Ask the host about ``roots`` and the listeners on ``ports`` (one round trip).

    Raises :class:`OwnerUnknown` when the host cannot answer (connector errors
    propagate unchanged).
    """
    port_list = sorted(set(ports))
    result = connector.run_python(
        OWNER_SCRIPT,
        owner_args(roots, port_list, address),
        timeout=timeout,
        display=f"who listens on port(s) {', '.join(map(str, port_list)) or 'none'}",
        quick=True,  # /proc reads, about half a millisecond
    )
    if result.exit_code == 127:
        raise OwnerUnknown("python3 is not installed on the host; the health gate needs it")
    if not result.ok:
        cause = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise OwnerUnknown(f"exit {result.exit_code}: {one_line(cause, limit=200)}")
    return Ownership.parse(result.stdout)


def port_conflicts(
    connector: Connector,
    ports: Iterable[int],
    address: str,
    ours: Sequence[tuple[int, int | None]] = (),
) -> tuple[list[Listener], int]:
    """Listeners on ``ports`` (reachable at ``address``) that no process of ``ours`` holds.

    Returned with the count of processes that could not be inspected, for
    :meth:`Listener.held_by`. Empty when every port is free or ours.
    """
    seen = observe(connector, ours, ports, address)
    return seen.strangers(), seen.hidden


class ProcessWatch:
    """A gate guard: the process we started lives, and it owns the probed socket.

    Called after every probe attempt (so also after the last, passing one).
    Raises :class:`~adapters.health.gate.ProcessGone` the moment the process
    is gone or its pid belongs to another process: waiting out the window
    would only hide the cause. A passing probe on ``port`` turns into a
    failure unless every socket there that the address reaches is held by
    the process, its group or session, or a descendant. ``port`` None
    (``command`` probes) checks liveness only. ``start`` None (systemd's
    ``MainPID``) is pinned on the first look, so a restart later is noticed.

    ``child``: ``pid`` is a wrapper that outlives its command and may run it
    again after a crash (the direct supervisor's process-group leader), so
    its children at the first look are pinned too: once none of them is
    left, the command we started is gone, even if the wrapper restarted it.

    A look runs a program on the host, which costs the host CPU (a fork
    over SSH). Every passing attempt is looked at; a failing one only when
    ``look_every_s`` has passed since the watch began or last looked, so a
    component that starts in time costs one look, and a dead one is still
    named within ``look_every_s`` (shorter than the wrapper's restart delay,
    so the first look cannot mistake a restarted command for ours).
    """

    def __init__(
        self,
        connector: Connector,
        component: str,
        pid: int,
        start: int | None,
        *,
        port: int | None,
        address: str,
        host: str | None = None,
        child: bool = False,
        look_every_s: float = LOOK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.look_every_s = look_every_s
        self._clock = clock
        self._looked = clock()
        self.connector = connector
        self.component = component
        self.pid = pid
        self.start = start
        self.port = port
        self.address = address
        self.host = host or connector.name
        self.child = child
        self.kids: frozenset[tuple[int, int]] | None = None

    def __call__(self, result: ProbeResult) -> ProbeResult:
        now = self._clock()
        if not result.ok and now - self._looked < self.look_every_s:
            return result  # a failure needs no owner; liveness is looked at soon
        self._looked = now
        ports = [self.port] if self.port is not None else []
        seen = observe(self.connector, [(self.pid, self.start)], ports, self.address)
        root = next((r for r in seen.roots if r.pid == self.pid), None)
        if root is None or not root.alive:
            raise ProcessGone(self._gone(root))
        if self.start is None:
            self.start = root.start
        if self.child:
            self._same_command(root, result.ok)
        if self.port is None or not result.ok:
            return result
        strangers = seen.strangers()
        if strangers:
            held = strangers[0].held_by(seen.hidden)
            why = (
                f"port {self.port} on {self.host} is served by {held}, "
                f"not by {self.component} (pid {self.pid})"
            )
        elif not seen.listeners:
            why = (
                f"no socket on {self.host} listens on port {self.port} for {self.address}: "
                f"the answer did not come from {self.component} (pid {self.pid})"
            )
        else:
            return result
        return ProbeResult(
            False, one_line(f"{result.detail}, but {why}", limit=500), result.elapsed_ms
        )

    def _same_command(self, root: Root, answered: bool) -> None:
        kids = frozenset(root.kids)
        if self.kids is None:
            if not kids and answered:
                raise ProcessGone(f"{self.component} (pid {self.pid}) is not running its command")
            if not kids:
                # Looked before the wrapper forked (start returns at once
                # when a gate watches): pin at the next look. A command that
                # never runs never answers, so the window decides.
                return
            self.kids = kids
        elif not self.kids & kids:
            first = min(pid for pid, _ in self.kids)
            raise ProcessGone(f"{self.component} (pid {first}, under pid {self.pid}) exited")

    def _gone(self, root: Root | None) -> str:
        what = f"{self.component} (pid {self.pid})"
        if root is None or root.state == "":
            return f"{what} exited"
        if root.state in ("Z", "X", "x"):
            return f"{what} exited (a zombie now)"
        return f"{what} exited (pid {self.pid} now belongs to another process)"
