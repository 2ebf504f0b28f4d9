"""``tests.crashing``, the crash injection of the recovery tests: which
appended events each spec stops at, and that it stops only once they are
stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledger.keys import KeyPair
from ledger.storage import StorageConfig, open_ledger
from ledger.trust import Trust
from tests.crashing import Spec, Trigger, command, install


class StepRecorded:
    def __init__(self, host: str, step: str, ok: bool = True) -> None:
        self.host, self.step, self.ok = host, step, ok


class OperationStarted:
    pass


class HostActivated:
    def __init__(self, host: str) -> None:
        self.host = host


class HostRetired:
    def __init__(self, host: str) -> None:
        self.host = host


class HostRestored:
    def __init__(self, host: str, release_id: str | None, detail: str) -> None:
        self.host, self.release_id, self.detail = host, release_id, detail


RETIRED = "retired: the operation's target runs nothing here"


def stops(spec: str, *appends: list[Any]) -> int | None:
    """The index of the append ``spec`` stops after, or None."""
    trigger = Trigger(Spec.parse(spec))
    return next((i for i, events in enumerate(appends) if trigger.matches(events)), None)


def test_intent_and_steps() -> None:
    appends: list[list[Any]] = [
        [OperationStarted()],
        [StepRecorded("dev-1", "upload")],
        [StepRecorded("dev-2", "upload")],
        [StepRecorded("dev-2", "start", ok=False)],
        [StepRecorded("dev-1", "recover-probe"), StepRecorded("dev-2", "recover-probe")],
    ]
    assert stops("intent", *appends) == 0
    assert stops("upload", *appends) == 1
    assert stops("dev-2:upload", *appends) == 2
    assert stops("start", *appends) == 3, "whatever the step's outcome"
    assert stops("dev-2:recover-probe", *appends) == 4
    assert stops("swap", *appends) is None
    assert stops("dev-3:upload", *appends) is None


def test_retire_before_and_after_host_retired_exists() -> None:
    restored = HostRestored("dev-1", "r1", "restored release v1 and it is healthy")
    assert stops("retire", [restored], [HostRestored("dev-2", None, RETIRED)]) == 1
    assert stops("retire", [HostRestored("dev-2", None, "stopped; the host ran nothing")]) is None
    retired = HostRestored("dev-2", None, RETIRED)
    assert stops("dev-3:retire", [retired], [HostRetired("dev-3")]) == 1
    assert stops("retire", [StepRecorded("dev-1", "start")], [StepRecorded("dev-2", "retire")]) == 1


def test_nth_event() -> None:
    appends: list[list[Any]] = [
        [OperationStarted()],
        [HostActivated("dev-1"), HostActivated("dev-2")],
        [HostActivated("dev-3")],
    ]
    assert stops("event:HostActivated", *appends) == 1
    assert stops("event:HostActivated:2", *appends) == 1
    assert stops("event:HostActivated:3", *appends) == 2
    assert stops("event:HostActivated:4", *appends) is None
    assert stops("event:*:1", *appends) == 0
    assert stops("event:*:4", *appends) == 2


@pytest.mark.parametrize("bad", ["", "event:", "event:X:0", "after:-1", "dev-1:", "event:X:y"])
def test_bad_specs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        command(bad, "deploy")


def test_the_hook_stops_after_the_append_is_stored(tmp_path: Path, root_key: KeyPair) -> None:
    class Crashed(Exception):
        pass

    def crash() -> None:
        raise Crashed

    config = StorageConfig.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = open_ledger(config, root_key, create=True)
    undo = install(Spec.parse("event:Established"), crash)
    try:
        with pytest.raises(Crashed):
            ledger.append(
                Trust.establish(
                    keyid=root_key.keyid,
                    name="root",
                    public_key=root_key.public_key,
                    ledger_name="test",
                )
            )
    finally:
        undo()
        ledger.close()
    reopened = open_ledger(config, None)
    try:
        assert reopened.max_seq() == 1, "the crash comes after the record is stored"
    finally:
        reopened.close()
