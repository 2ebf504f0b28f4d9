"""Keeping an operation's lease alive, and telling a live holder from a dead one.

A lease is live while its holder renews it: the intent records the holding
process (host name, pid, boot id and start time) and a heartbeat thread
appends ``LeaseRenewed`` every ttl/3 while the operation works. A crashed
holder stops renewing, so its lease expires one ttl after its last renewal
whatever the ttl's length; a working one never expires, however long it
works. On the holder's own machine ``chassis recover`` need not wait for
that: it can see whether the recorded process still runs.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.errors import LedgerError
from ledger.installations import LeaseHolder, process_token

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
