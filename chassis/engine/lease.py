"""Keeping an operation's lease alive, and telling a live holder from a dead one.

A lease is live while its holder renews it: the intent records the holding
process (host name, pid, boot id and start time) and a heartbeat thread
appends ``LeaseRenewed`` every ttl/3 while the operation works. A crashed
holder stops renewing, so its lease expires one ttl after its last renewal
whatever the ttl's length; a working one never expires, however long it
works. On the holder's own machine ``chassis recover`` need not wait for
that: it can see whether the recorded process still runs.

``--wait-lock`` (deploy, rollback, reconcile) waits for a live holder to
finish instead of failing at once: :func:`when_lease_free`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ledger.errors import LedgerError
from ledger.installations import Installation, LeaseHeldError, LeaseHolder, process_token

if TYPE_CHECKING:
    from ledger.application import Ledger

T = TypeVar("T")

_MIN_INTERVAL_S = 0.2

_running: dict[str, LeaseKeeper] = {}
"""op_id → the keeper renewing its lease in this process."""
_running_lock = threading.Lock()


class LeaseKeeper:
    """Renews one operation's lease from a daemon thread.

    ``renew(owner)`` (the recorder's) appends the renewal under the owner's
    lock and returns the seconds until the next one (ttl/3), or None once
    the operation no longer needs it (finished, or the recorder halted).
    The keeper holds its owner weakly: an operation that is abandoned (its
    function raised and nothing references its recorder any more) stops
    being renewed, so even a long-lived process cannot strand a lease.
    """

    def __init__(
        self, owner: object, op_id: str, renew: Callable[[Any], float | None], first_s: float
    ) -> None:
        self.op_id = op_id
        self._owner = weakref.ref(owner)
        self._renew = renew
        self._first_s = first_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{op_id[:8]}", daemon=True)
        with _running_lock:
            _running[op_id] = self
        self._thread.start()

    def running(self) -> bool:
        return not self._stop.is_set() and self._owner() is not None

    def stop(self) -> None:
        self._stop.set()
        with _running_lock:
            if _running.get(self.op_id) is self:
                del _running[self.op_id]

    def _run(self) -> None:
        interval: float | None = self._first_s
        try:
            while interval is not None and not self._stop.wait(max(interval, _MIN_INTERVAL_S)):
                owner = self._owner()
                if owner is None:
                    break
                try:
                    interval = self._renew(owner)
                except LedgerError:
                    break  # the recorder halted itself; its next caller says why
                finally:
                    del owner
        finally:
            self.stop()


def renewed_here(op_id: str) -> bool:
    """Whether this process still works on ``op_id`` (its keeper runs)."""
    gc.collect()  # an abandoned operation's recorder may sit in a reference cycle
    with _running_lock:
        keeper = _running.get(op_id)
    return keeper is not None and keeper.running()


def holder_running(lease: dict[str, Any]) -> bool | None:
    """Whether the process holding ``lease`` still runs: True or False when it
    ran on this machine (same host name and boot), None when that cannot be
    told from here (another machine, or a lease from before holders were
    recorded). A zombie, or a pid now used by another process, is gone."""
    holder = LeaseHolder.of(lease)
    if holder is None or holder.hostname != socket.gethostname():
        return None
    boot = holder.process.partition(":")[0]
    here = LeaseHolder.here()
    if not boot or boot != here.process.partition(":")[0]:
        return None
    if holder.pid == os.getpid():
        return renewed_here(str(lease["op_id"]))
    if process_token(holder.pid) != holder.process:
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{holder.pid}/stat").read_text(encoding="utf-8", errors="replace")
        if stat[stat.rfind(")") + 2 :].startswith(("Z", "X")):
            return False
    return True


DEFAULT_WAIT_LOCK_S = 600
"""``--wait-lock`` without a number: ten minutes."""
WAIT_POLL_S = 1.0
"""How often a waiting command reads the lease again."""


def lease_reader(ledger: Ledger, app: str, environment: str) -> Callable[[], Installation | None]:
    """Reads the installation of ``app`` in ``environment`` from the ledger
    anew on each call (None before its first deploy): what
    :func:`when_lease_free` polls."""
    key = Installation.id_for(Installation.key(app, environment))
    return lambda: ledger.find(Installation, key)


def when_lease_free(
    installation: Callable[[], Installation | None],
    action: Callable[[], T],
    *,
    wait_s: float | None,
    progress: Callable[[str], None],
    poll_s: float = WAIT_POLL_S,
) -> T:
    """Run ``action`` (a command that takes or needs the installation's lease).

    Without ``wait_s`` that is all: a held lease fails it at once (exit 7).
    With it, while another operation holds the lease (``installation()``
    reads it from the ledger again each time), wait, saying once per holder
    what is awaited, and run ``action`` when the lease is free; if ``action``
    is refused because another command took the lease first, wait again.
    After ``wait_s`` seconds the refusal is raised with "waited N s" added.
    A lease whose holder is gone (expired, or its process no longer runs on
    this machine) is not waited for: only ``chassis recover`` or ``chassis
    lease break`` frees it, so the refusal comes at once, saying so.
    """
    if wait_s is None:
        return action()
    started = time.monotonic()
    announced: object = None
    while True:
        current = installation()
        if current is None or current.lease is None:
            try:
                return action()
            except LeaseHeldError:
                current = installation()
                if current is None or current.lease is None:
                    raise  # not the installation's lease: nothing to wait for
        assert current.lease is not None
        waited = time.monotonic() - started
        gone = _holder_gone(current)
        if gone is not None:
            again = installation()  # it may have finished just now
            if again is None or again.lease is None or again.lease["op_id"] != gone:
                continue
            _refuse(again, f"; its holder is gone: waiting cannot free it (waited {waited:.0f} s)")
        if waited >= wait_s:
            _refuse(current, f" (waited {waited:.0f} s)")
        if current.lease["op_id"] != announced:
            announced = current.lease["op_id"]
            progress(
                f"waiting up to {wait_s:g} s for the lease of {current.app}/"
                f"{current.environment}, held by {current.lease_text(datetime.now(UTC))}"
            )
        time.sleep(max(0.0, min(poll_s, wait_s - waited)))


def _holder_gone(installation: Installation) -> str | None:
    """The lease's op_id when its holder will not free it: expired, or its
    process known (on this machine) not to run; else None."""
    lease = installation.lease
    if lease is None:
        return None
    expires = installation.lease_expires()
    if (expires is not None and datetime.now(UTC) > expires) or holder_running(lease) is False:
        return str(lease["op_id"])
    return None


def _refuse(installation: Installation, suffix: str) -> NoReturn:
    """Raise the lease-held refusal ``check_lease_free`` gives, with ``suffix``."""
    try:
        installation.check_lease_free(datetime.now(UTC))
    except LeaseHeldError as e:
        raise LeaseHeldError(f"{e}{suffix}") from None
    raise AssertionError("the lease was held")
