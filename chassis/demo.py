"""``make demo``: the ledger on the embedded default (SQLite), end to end.

Runs the real ``chassis`` commands in ``./.demo``: create a workspace and its
root of trust, add and revoke keys, read the log, verify it, then tamper with
a copy of the database and show verification naming the altered event.
(The deploy engine work replaces this with a multi-node deployment.)
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

DEMO = Path(".demo").absolute()


def chassis(*args: str, cwd: Path, expect: int = 0) -> None:
    print(f"\n$ chassis {shlex.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "chassis", *args], cwd=cwd, check=False)
    if done.returncode != expect:
        sys.exit(f"demo: 'chassis {shlex.join(args)}' exited {done.returncode}, expected {expect}")


def tamper(database: Path) -> None:
    """Change one byte of the second event's payload, as an intruder might."""
    conn = sqlite3.connect(database)
    (state,) = conn.execute("SELECT state FROM stored_events WHERE rowid = 2").fetchone()
    conn.execute(
        "UPDATE stored_events SET state = ? WHERE rowid = 2",
        (state.replace(b'"operator"', b'"operatoR"', 1),),
    )
    conn.commit()
    conn.close()


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    keys = DEMO / "keys"
    keys.mkdir(parents=True, mode=0o700)
    os.environ["CHASSIS_KEYS_DIR"] = str(keys)
    for name in ("CHASSIS_LEDGER", "CHASSIS_KEY", "CHASSIS_WORKSPACE"):
        os.environ.pop(name, None)
    shop = DEMO / "shop"

    chassis("init", str(shop), "--name", "shop", cwd=DEMO)
    chassis("key", "new", "ci-bot", "--roles", "operator,checkpoint", cwd=shop)
    chassis("key", "new", "release-approver", "--roles", "approver", cwd=shop)
    chassis("key", "revoke", "release-approver", "--reason", "rotated after the demo", cwd=shop)
    chassis("--key", "ci-bot", "key", "new", "intruder", "--roles", "admin", cwd=shop, expect=6)
    chassis("key", "list", cwd=shop)
    chassis("ledger", "log", cwd=shop)
    chassis("ledger", "verify", cwd=shop)

    copy = DEMO / "shop-tampered"
    shutil.copytree(shop, copy)
    tamper(copy / ".chassis" / "ledger.db")
    print("\n# one byte of event 2 changed in a copy of the database:")
    chassis("ledger", "verify", cwd=copy, expect=8)
    print(f"\nDemo done. Workspace: {shop}  (keys: {keys})")


if __name__ == "__main__":
    main()
