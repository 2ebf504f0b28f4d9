"""A writer process for the concurrency tests (run with ``python -m``).

    python -m tests.concurrent_writer URL KEYFILE NAME COUNT retry|once BARRIER_DIR WRITERS

Appends COUNT notes to notebook "shared". With ``once`` it loads, waits at a
file barrier until every writer has loaded the same version, then appends
without retrying: exactly one writer can win. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ledger.errors import ConflictError
from ledger.keys import load_keypair
from ledger.storage import StorageConfig, open_ledger
from tests.notes import Notebook


def wait_for_all(barrier: Path, name: str, writers: int) -> None:
    (barrier / name).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < writers:
        if time.monotonic() > deadline:
            raise TimeoutError("barrier")
        time.sleep(0.005)


def main() -> None:
    url, keyfile, name, count, mode, barrier, writers = sys.argv[1:8]
    key = load_keypair(Path(keyfile))
    ledger = open_ledger(StorageConfig.from_url(url), key)
    book_id = Notebook.id_for("shared")
    written = conflicts = 0
    if mode == "retry":
        for i in range(int(count)):

            def note(book: Notebook, line: str = f"{name}:{i}") -> None:
                book.note(line, keyid=key.keyid)

            ledger.update(Notebook, book_id, note)
            written += 1
    else:
        book = ledger.load(Notebook, book_id)
        book.note(f"{name}:once", keyid=key.keyid)
        wait_for_all(Path(barrier), name, int(writers))
        try:
            ledger.append(book)
            written = 1
        except ConflictError as e:
            conflicts = 1
            print(json.dumps({"error": str(e)}), file=sys.stderr)
    ledger.close()
    print(json.dumps({"name": name, "written": written, "conflicts": conflicts}))


if __name__ == "__main__":
    main()
