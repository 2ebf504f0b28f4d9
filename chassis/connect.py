"""Connectors for registered hosts: local subprocesses or SSH (paramiko).

SSH host keys are checked against the workspace's own known-hosts file
(``.chassis/known_hosts``), never the operator's ``~/.ssh``: what a workspace
trusts is part of the workspace. ``chassis host trust-key`` pins a key.

A host has **one** pinned key, whatever its type. paramiko checks an offered
key against the pins of the host's name: the pin of the offered key's type
if there is one, else it refuses (``BadHostKeyException``). With two pins of
two types (what pinning per key type used to write), an impostor offering
the second type was accepted. So:

- :func:`pin_host` writes exactly one line per host, removing every earlier
  entry that names the host (plain or hashed, any key type), and refuses a
  different key *or key type* unless ``replace``, showing both fingerprints;
- it asks the server for the pinned type first (as paramiko's client does),
  so a host that still offers the pinned key is never mistaken for a changed
  one;
- :class:`PinnedSSHConnector` refuses to connect to a host with more than one
  pinned key, before any handshake, so nothing in known_hosts can widen what
  the host may present.

Pins are shared through the ledger: ``trust-key`` also records the pin as a
signed ``chassis.host.key-pinned.v1`` event on the ``Host`` aggregate, read
back only through the ledger's verified path (a record whose signer is not
trusted as an operator at its position is refused, never used). Before a
session opens, a ledger pin for the host's current address and port that
this workspace has not taken yet is written into its known_hosts, replacing
whatever the file pinned for the host: a teammate's pin, or their
``--replace`` after a reinstall, needs nothing from anyone else. A line
written from the ledger carries ``chassis-ledger-pin=SHA256:…`` (the pin it
took) as its known_hosts comment, so the file is rewritten once per new
ledger pin and not on every connection.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapters.connectors.base import ADDRESS, ADDRESS_RULE, Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.paramiko_only import paramiko
from adapters.connectors.ssh import (
    DEFAULT_IO_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    SSHConnector,
    SSHSettings,
    _handshake_cause,  # the connector's own wording for failed handshakes
    _os_cause,
    known_hosts_name,
    open_socket,
    rewrite_known_hosts,
)
from adapters.connectors.ssh import fingerprint as ssh_fingerprint
from adapters.errors import ConnectorError, HostUnreachable
from chassis.errors import ChassisError, WorkspaceError
from chassis.stack.spec import SSH_TIMEOUT_MS
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.errors import LedgerError
from ledger.hosts import Host, HostSettings, PinnedHostKey

DEFAULT_CONNECT_TIMEOUT_S = 10.0
KNOWN_HOSTS = "known_hosts"
_RSA_TYPES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def known_hosts_path(ws: Workspace) -> Path:
    return ws.state_dir / KNOWN_HOSTS


def connector_for(
    host: Host, ws: Workspace, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
) -> Connector:
    """The host's connector, checking its SSH key against the ledger's pin
    (when there is one for its address and port) and the workspace's."""
    return connector_from_settings(
        host.name, host.settings, ws, connect_timeout=connect_timeout, pin=host.key_pin()
    )


def connector_from_settings(
    name: str,
    settings: HostSettings,
    ws: Workspace,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    pin: PinnedHostKey | None = None,
) -> Connector:
    """A connector for ``settings``. ``pin`` is the host's pin in the ledger
    (``Host.key_pin()``, or :func:`recorded_pin`); it counts only when it was
    taken at ``settings``' address and port."""
    if settings.connector == "local":
        return LocalConnector(name)
    assert settings.address is not None and settings.user is not None
    known_hosts = known_hosts_path(ws)
    known_hosts.touch(mode=0o600, exist_ok=True)
    silence = ssh_timeout_s(ws, name, settings.environment)
    if pin is not None and (pin.address, pin.port) != (settings.address, settings.port):
        pin = None
    return PinnedSSHConnector(
        SSHSettings(
            name=name,
            address=settings.address,
            port=settings.port,
            user=settings.user,
            key_file=Path(settings.key_file).expanduser() if settings.key_file else None,
            known_hosts=known_hosts,
            connect_timeout=min(connect_timeout, silence or connect_timeout),
            io_timeout=silence or DEFAULT_IO_TIMEOUT,
            keepalive_interval=silence / KEEPALIVE_COUNT if silence else DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_count_max=KEEPALIVE_COUNT,
        ),
        ledger_pin=pin,
    )


def recorded_pin(ws: Workspace, name: str) -> PinnedHostKey | None:
    """Host ``name``'s pin in the workspace's ledger, for callers that hold
    only settings: read through the verified path (``Ledger.load``), so it
    comes from a record signed by a key trusted as an operator. None when
    the ledger has no pin for the host's address and port, or cannot be read
    (the ledger check reports that; the workspace's known_hosts alone then
    decides, as before pins were shared)."""
    from ledger.storage import open_ledger

    try:
        ledger = open_ledger(ws.storage(), None)
    except (LedgerError, WorkspaceError):
        return None
    try:
        host = ledger.find(Host, Host.id_for(name))
    except LedgerError:
        return None
    finally:
        ledger.close()
    return None if host is None else host.key_pin()


# -- ssh timeouts ----------------------------------------------------------------------

KEEPALIVE_COUNT = 3


def ssh_timeout_s(ws: Workspace, host: str, environment: str) -> float | None:
    """The stack's ``ssh_timeout_ms`` for ``host`` (its own, else its
    environment's) in seconds, or None for the defaults. It bounds how long a
    silent host can hold an operation: a transfer without progress, keepalives
    unanswered (``KEEPALIVE_COUNT`` per period), connecting. Read from the
    stack file, not the ledger, since it is about this workspace's network, not
    about what runs on the host; ``stack validate`` checks its range, and a
    value it would refuse is ignored here."""
    stack = _stack(ws)
    environments = stack.get("environments")
    env = environments.get(environment) if isinstance(environments, dict) else None
    if not isinstance(env, dict):
        return None
    value = env.get("ssh_timeout_ms")
    for entry in env.get("hosts") or []:
        if isinstance(entry, dict) and entry.get("name") == host:
            value = entry.get("ssh_timeout_ms", value)
    low, high = SSH_TIMEOUT_MS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value / 1000


def _stack(ws: Workspace) -> dict[str, object]:
    """The raw stack file (parsed once per content: ``chassis.toml_files``)."""
    try:
        return ws.stack()
    except (WorkspaceError, OSError):
        return {}  # reported by whatever reads the stack for its own sake


# -- known_hosts: one pin per host ---------------------------------------------


@dataclass(frozen=True)
class PinnedKey:
    """One known_hosts entry naming a host."""

    key_type: str
    key: paramiko.PKey

    @property
    def fingerprint(self) -> str:
        return ssh_fingerprint(self.key)

    def describe(self) -> str:
        return f"{self.key_type} {self.fingerprint}"


def _names_host(pattern: str, host: str) -> bool:
    """Whether one known_hosts name (plain or ``|1|salt|hash``) is ``host``."""
    if pattern.startswith("|1|"):
        with contextlib.suppress(Exception):
            return bool(paramiko.HostKeys.hash_host(host, pattern) == pattern)
        return False
    return pattern == host


def _entry_names(line: str) -> list[str] | None:
    """The host names of a key line; None for comments, markers and junk."""
    stripped = line.strip()
    if not stripped or stripped.startswith(("#", "@")):
        return None
    fields = stripped.split()
    return fields[0].split(",") if len(fields) >= 3 else None


def pinned_keys(known_hosts: Path, address: str, port: int) -> list[PinnedKey]:
    """Every key known_hosts pins for the host, in file order (unparsable ones too)."""
    host = known_hosts_name(address, port)
    try:
        lines = known_hosts.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        names = _entry_names(line)
        if names is None or not any(_names_host(n, host) for n in names):
            continue
        entry = None
        with contextlib.suppress(Exception):
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line.strip())
        if entry is None or entry.key is None:
            raise HostKeyPinError(
                f"{known_hosts}: an entry for {host} cannot be read; remove it or re-pin "
                "the host with 'chassis host trust-key --replace'"
            )
        found.append(PinnedKey(line.split()[1], entry.key))
    return found


def _without_host(line: str, host: str) -> str | None:
    """``line`` with ``host`` taken out of its names (None: nothing left)."""
    names = _entry_names(line)
    if names is None:
        return line
    kept = [n for n in names if not _names_host(n, host)]
    if len(kept) == len(names):
        return line
    if not kept:
        return None
    stripped = line.lstrip()
    rest = stripped[len(stripped.split()[0]) :]
    return ",".join(kept) + rest


def pin_known_host(
    known_hosts: Path, address: str, port: int, key: paramiko.PKey, *, from_ledger: bool = False
) -> None:
    """Make ``key`` the one key known_hosts pins for the host.

    Every earlier entry naming the host (any key type, plain or hashed) goes;
    other lines stay verbatim. Read-modify-write under the same flock the SSH
    connector's trust-on-first-use uses, ending in an atomic rename. With
    ``from_ledger`` the line says it is the ledger's pin (its comment is
    :data:`LEDGER_MARK` and the key's fingerprint).
    """
    if not ADDRESS.match(address):  # the address is written into the file
        raise HostKeyPinError(f"address {address!r}: expected {ADDRESS_RULE}")
    host = known_hosts_name(address, port)
    mark = f" {LEDGER_MARK}{ssh_fingerprint(key)}" if from_ledger else ""
    rewrite_known_hosts(
        known_hosts,
        lambda entry: _without_host(entry, host),
        f"{host} {key.get_name()} {key.get_base64()}{mark}\n",
        new_mode=0o600,
    )


# -- the ledger's pin ------------------------------------------------------------------

LEDGER_MARK = "chassis-ledger-pin="
"""The known_hosts comment of a line written from the ledger's pin, followed
by that pin's fingerprint: the ledger pin this workspace last took."""


def ledger_host_key(name: str, pin: PinnedHostKey) -> paramiko.PKey:
    """The key of a ledger pin; ``HostPinProblem`` when it is not one (a
    signed pin no SSH library reads is refused, not skipped)."""
    where = f"{pin.address}:{pin.port}"
    try:
        key = paramiko.PKey.from_type_string(
            pin.key_type, base64.b64decode(pin.public_key, validate=True)
        )
    except Exception as e:  # paramiko raises several kinds for a bad blob
        raise HostPinProblem(
            name,
            f"the ledger pins {pin.key_type} {pin.fingerprint} but that is not a key "
            f"this client reads ({type(e).__name__}); re-pin the host with "
            f"'chassis host trust-key {name} --replace'",
            where=where,
        ) from None
    if key.get_name() != pin.key_type or ssh_fingerprint(key) != pin.fingerprint:
        raise HostPinProblem(
            name,
            f"the ledger's pin {pin.key_type} {pin.fingerprint} does not match its own key; "
            f"re-pin the host with 'chassis host trust-key {name} --replace'",
            where=where,
        )
    return key


def _ledger_marks(known_hosts: Path, address: str, port: int) -> set[str]:
    """The ledger fingerprints that the host's known_hosts lines say they took."""
    host = known_hosts_name(address, port)
    try:
        lines = known_hosts.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return set()
    marks = set()
    for line in lines:
        names = _entry_names(line)
        if names is None or not any(_names_host(n, host) for n in names):
            continue
        fields = line.split()
        if len(fields) >= 4 and fields[3].startswith(LEDGER_MARK):
            marks.add(fields[3][len(LEDGER_MARK) :])
    return marks


def agree_with_ledger(known_hosts: Path, name: str, pin: PinnedHostKey) -> bool:
    """Write the ledger's pin into the workspace's known_hosts unless the
    file already took this very pin; True when the file was rewritten.

    A ledger pin is signed by a trusted key, so one this workspace has not
    seen replaces whatever the file pinned for the host (a teammate pinned
    it, or re-pinned it after a reinstall). Once taken, the file is what
    this workspace works with: a key changed in it later is refused on
    connect, and re-pinned with ``trust-key --replace``, as before.
    """
    if pin.fingerprint in _ledger_marks(known_hosts, pin.address, pin.port):
        return False
    key = ledger_host_key(name, pin)
    pin_known_host(known_hosts, pin.address, pin.port, key, from_ledger=True)
    return True


class HostPinProblem(ConnectorError):
    """known_hosts pins several keys for one host (any of them would be
    accepted, so a switch of key type could pass unnoticed), or an entry for
    it cannot be read. Exit code 11, like any host key refusal."""


class PinnedSSHConnector(SSHConnector):
    """The SSH connector, refusing hosts whose pin is not exactly one readable key.

    Checked before each new session, so no handshake happens first; the
    ledger's pin (``ledger_pin``) is written into known_hosts first when the
    workspace has not taken it yet. (A hook in ``adapters.connectors.ssh``
    would be the tidier place; this keeps the rule beside the code that
    writes the pins.)
    """

    def __init__(self, settings: SSHSettings, *, ledger_pin: PinnedHostKey | None = None) -> None:
        super().__init__(settings)
        self.ledger_pin = ledger_pin

    def _connection(self) -> paramiko.SSHClient:
        if not self._connected():
            s = self.settings
            if self.ledger_pin is not None:
                try:
                    agree_with_ledger(s.known_hosts, s.name, self.ledger_pin)
                except HostKeyPinError as e:
                    raise HostPinProblem(s.name, str(e), where=s.where) from None
                except OSError as e:
                    raise HostPinProblem(
                        s.name,
                        f"cannot write the ledger's pin into {s.known_hosts}: {e}",
                        where=s.where,
                    ) from None
            try:
                pins = pinned_keys(s.known_hosts, s.address, s.port)
            except HostKeyPinError as e:
                raise HostPinProblem(s.name, str(e), where=s.where) from None
            if len(pins) > 1:
                raise HostPinProblem(
                    s.name,
                    f"{len(pins)} host keys are pinned in {s.known_hosts} "
                    f"({', '.join(p.describe() for p in pins)}) but a host has one; refusing "
                    f"to connect: check which key it really has and keep that one with "
                    f"`chassis host trust-key {s.name} --replace`",
                    where=s.where,
                )
        return super()._connection()


# -- trust-key ---------------------------------------------------------------------


class HostKeyPinError(ChassisError):
    """A pin was refused (changed key or type, local host, unreadable entry): exit 11."""

    exit_code = 11


@dataclass(frozen=True)
class HostKeyOffer:
    """What a host offers against what the workspace pins for it."""

    host: str
    where: str
    key_type: str
    fingerprint: str
    pinned: tuple[PinnedKey, ...]

    @property
    def previous(self) -> str | None:
        """The pinned key(s), ``type SHA256:…``, or None when nothing is pinned."""
        return ", ".join(p.describe() for p in self.pinned) or None


@dataclass(frozen=True)
class PinResult:
    host: str
    key_type: str
    fingerprint: str
    outcome: str
    """``pinned``, ``already-pinned``, ``replaced`` or ``declined``."""
    previous: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "host": self.host,
            "key_type": self.key_type,
            "fingerprint": self.fingerprint,
            "outcome": self.outcome,
            "previous": self.previous,
        }


def offered_host_key(
    name: str, address: str, port: int, timeout: float, prefer: str | None = None
) -> paramiko.PKey:
    """The key the server presents, asking for type ``prefer`` first.

    Only the key exchange is done (no authentication). Preferring the pinned
    type is what paramiko's client does when it connects, so trust-key sees
    the key a connection would see.
    """
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        sock = open_socket(address, port, timeout)
    except OSError as e:
        raise HostUnreachable(name, f"unreachable: {_os_cause(e, timeout)}", where=where) from e
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    try:
        if prefer is not None:
            options = transport.get_security_options()
            first = _RSA_TYPES if prefer in _RSA_TYPES else (prefer,)
            wanted = [t for t in first if t in options.key_types]
            options.key_types = [*wanted, *(t for t in options.key_types if t not in wanted)]
        transport.start_client(timeout=timeout)
        key: paramiko.PKey = transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as e:
        cause = _handshake_cause(e, timeout)
        raise HostUnreachable(name, f"unreachable: {cause}", where=where) from e
    finally:
        transport.close()
    return key


def pin_host(
    ws: Workspace,
    host: Host,
    *,
    replace: bool,
    confirm: Callable[[HostKeyOffer], bool],
    timeout: float,
    ledger: Ledger | None = None,
) -> PinResult:
    """Fetch the host's SSH key and make it the host's one pin, in the ledger
    (with ``ledger``: a signed ``key-pinned`` event) and in .chassis/known_hosts.

    The key is compared with the ledger's pin for the host's address and
    port (authoritative: a pin this workspace has not taken yet is written
    into known_hosts first) together with the file's. A different key
    already pinned, of the same type or another, is refused with both
    fingerprints unless ``replace`` (a changed key is what an attacker shows
    too). ``confirm`` sees the offer (and what it replaces) before anything
    is written; declining writes nothing. A key pinned in the file alone
    (a workspace from before pins were shared) is recorded in the ledger
    when it is offered again (outcome ``already-pinned``).
    """
    settings = host.settings
    if settings.connector != "ssh" or settings.address is None:
        raise HostKeyPinError(f"host {host.name} is local: it has no SSH host key")
    path = known_hosts_path(ws)
    recorded = host.key_pin()
    pins: tuple[PinnedKey, ...] = ()
    if recorded is not None:
        agree_with_ledger(path, host.name, recorded)
        pins = (PinnedKey(recorded.key_type, ledger_host_key(host.name, recorded)),)
    in_file = pinned_keys(path, settings.address, settings.port)
    pins += tuple(p for p in in_file if all(p.key != q.key for q in pins))
    prefer = pins[0].key_type if recorded is not None or len(pins) == 1 else None
    key = offered_host_key(host.name, settings.address, settings.port, timeout, prefer)
    offer = HostKeyOffer(
        host=host.name,
        where=f"{settings.address}:{settings.port}",
        key_type=key.get_name(),
        fingerprint=ssh_fingerprint(key),
        pinned=pins,
    )
    if len(pins) == 1 and pins[0].key == key:
        if recorded is None and ledger is not None:  # pinned before pins were shared
            _record_pin(ledger, host, key, expected=None, replaces=None)
            pin_known_host(path, settings.address, settings.port, key, from_ledger=True)
        return PinResult(host.name, offer.key_type, offer.fingerprint, "already-pinned")
    if pins and not replace:
        offered = f"host {host.name} ({offer.where}) offers {offer.key_type} {offer.fingerprint}"
        source = (
            str(path)
            if recorded is None
            else "the ledger" + (f" together with {path}" if len(pins) > 1 else "")
        )
        if len(pins) > 1:
            raise HostKeyPinError(
                f"{offered}, but {source} pins {len(pins)} keys for it ({offer.previous}) and "
                "a host has one; re-run with --replace to keep only the key it offers now"
            )
        what = "key type" if pins[0].key_type != offer.key_type else "key"
        raise HostKeyPinError(
            f"{offered}, but {source} pins {offer.previous}: the host {what} changed, "
            "refusing to pin it; if the host was reinstalled, re-run with --replace"
        )
    if not confirm(offer):
        return PinResult(
            host.name, offer.key_type, offer.fingerprint, "declined", previous=offer.previous
        )
    if ledger is not None:
        replaces = (
            recorded.fingerprint
            if recorded is not None
            else (in_file[0].fingerprint if len(in_file) == 1 else None)
        )
        _record_pin(ledger, host, key, expected=recorded, replaces=replaces)
    pin_known_host(path, settings.address, settings.port, key, from_ledger=ledger is not None)
    outcome = "replaced" if pins else "pinned"
    return PinResult(host.name, offer.key_type, offer.fingerprint, outcome, offer.previous)


def _record_pin(
    ledger: Ledger,
    host: Host,
    key: paramiko.PKey,
    *,
    expected: PinnedHostKey | None,
    replaces: str | None,
) -> None:
    """Append ``key-pinned`` for ``key`` unless the ledger pins it already;
    refused when the ledger's pin is no longer ``expected`` (a teammate pinned
    the host while this command compared keys)."""
    if ledger.signer is None:
        raise HostKeyPinError("recording a host key needs a signing key")
    actor = ledger.signer.keyid
    fingerprint = ssh_fingerprint(key)

    def record(current: Host) -> None:
        now = current.key_pin()
        if now is not None and (now.key_type, now.public_key) == (
            key.get_name(),
            key.get_base64(),
        ):
            return
        if (now and now.fingerprint) != (expected and expected.fingerprint):
            pinned = f"{now.key_type} {now.fingerprint}" if now else "nothing"
            raise HostKeyPinError(
                f"host {host.name}: its pin in the ledger changed while this command ran "
                f"(it now pins {pinned}); run 'chassis host trust-key {host.name}' again"
            )
        current.pin_key(
            key_type=key.get_name(),
            public_key=key.get_base64(),
            fingerprint=fingerprint,
            replaces=replaces,
            actor=actor,
        )

    ledger.update(Host, host.id, record)


def pin_host_key(
    ws: Workspace,
    host: Host,
    *,
    replace: bool,
    confirm: Callable[[str], bool],
    timeout: float,
    ledger: Ledger | None = None,
) -> tuple[str, str]:
    """:func:`pin_host` for callers that confirm by fingerprint: ``(fingerprint, outcome)``."""
    result = pin_host(
        ws,
        host,
        replace=replace,
        confirm=lambda offer: confirm(offer.fingerprint),
        timeout=timeout,
        ledger=ledger,
    )
    return result.fingerprint, result.outcome
