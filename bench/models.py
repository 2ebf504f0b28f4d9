"""Model materialize benchmark: Chassis vs a raw SFTP upload, and the skip path.

Run from the repository root::

    python bench/models.py [--quick] [--rounds R] [--json]

Starts one real sshd host on loopback (127.0.0.31) and, in this process:

1. **transfer**: the same ~64 MB model (four 16 MB shards of seeded random
   bytes and a few small files) put on the host R times each (default 3,
   quick 1), the two tools alternating, each time into an empty root:

   - **Chassis** (``plan_materialize`` + ``materialize``, in process): a new
     SSH connection, the inventory round, every byte streamed to the
     host's receiver which hashes it as it writes, fsync, the atomic
     placement, and the signed ``MaterializeStarted``/``FilesPlaced``/
     ``Materialized`` events;
   - **raw SFTP** (paramiko, as ``fabric.Connection.put`` uses it): a new
     connection, ``mkdir`` and ``put`` of every file, no hashing, no fsync,
     no ledger.

   The figure is the throughput ratio ``raw SFTP time / Chassis time``
   (median of the rounds); the goal is >= 0.9 (Chassis at least 90% of
   raw SFTP's throughput while it also verifies every byte on the host).

2. **skip path**: a model of 1,000 small files already on the host,
   materialized again (new connection, inventory by name and size, nothing
   sent, placement checked, events appended) R+2 times; the goal is the
   median < 1 s.

Goals are reported, not enforced (exit 0 unless the script crashes).
Progress goes to stderr; ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# ``python bench/models.py`` puts bench/ first on sys.path, where bench/ledger.py
# would shadow the ``ledger`` package: put the repository root there.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import paramiko  # noqa: E402

from bench._sshd_hosts import SSHDUnavailable, bench_hosts  # noqa: E402
from chassis.config.env import EnvVars  # noqa: E402
from chassis.connect import pin_host_key  # noqa: E402
from chassis.hosts import get_host, sync_declared  # noqa: E402
from chassis.keyring import load_acting_key  # noqa: E402
from chassis.models.materialize import (  # noqa: E402
    host_connector,
    materialize,
    plan_materialize,
)
from chassis.models.registry import register_model, resolve_source  # noqa: E402
from chassis.stack.spec import load_stack  # noqa: E402
from chassis.trust_admin import init_workspace  # noqa: E402
from chassis.workspace import Workspace  # noqa: E402
from ledger.application import Ledger  # noqa: E402
from ledger.models import ModelAsset  # noqa: E402
from ledger.storage import open_ledger  # noqa: E402
from tests.sshd import SSHTestHost  # noqa: E402

SEED = 64
SHARDS = 4
SHARD_BYTES = 16 * 10**6
SMALL_FILES = 1000
CONNECT_TIMEOUT_S = 10.0
TRANSFER_GOAL = 0.9
SKIP_GOAL_S = 1.0


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


@dataclass
class Results:
    chassis_s: list[float] = field(default_factory=list)
    sftp_s: list[float] = field(default_factory=list)
    skip_s: list[float] = field(default_factory=list)
    model_bytes: int = 0
    model_files: int = 0
    events_per_materialize: int = 0


def write_big_model(directory: Path) -> int:
    rng = random.Random(SEED)
    total = 0
    for i in range(SHARDS):
        data = rng.randbytes(SHARD_BYTES)
        (directory / f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors").write_bytes(data)
        total += len(data)
    for name, size in (("config.json", 600), ("tokenizer.json", 200_000), ("README.md", 2_000)):
        data = rng.randbytes(size)
        (directory / name).write_bytes(data)
        total += size
    return total


def write_many_files(directory: Path) -> None:
    rng = random.Random(SEED + 1)
    for i in range(SMALL_FILES):
        path = directory / f"shard-{i // 100:02d}" / f"part-{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(1024))


class Lab:
    """A workspace whose environment is the one sshd host, its key pinned."""

    def __init__(self, base: Path, host: SSHTestHost) -> None:
        self.host = host
        self.keys = base / "keys"
        self.root = base / "workspace"
        self.host_root = base / "host-root"
        created = init_workspace(
            self.root, name="bench", key_name=None, keys=self.keys, ledger_url=None
        )
        self.key_name = created.key_name
        (self.root / "chassis.toml").write_text(
            '[app]\nname = "bench"\n\n[components.api]\ncommand = "true"\n\n'
            '[profiles.one]\ngroups.a = { components = ["api"] }\n\n'
            "[environments.lab]\nhosts = [\n"
            f'  {{ name = "{host.name}", connector = "ssh", address = "{host.address}", '
            f'port = {host.port}, user = "{host.user}", key = "{host.client_key}", '
            f'root = "{self.host_root}" }},\n]\n'
        )
        self.ws = Workspace(self.root)
        with self.ledger() as ledger:
            sync_declared(ledger, load_stack(self.ws.stack_file))
            fingerprint, outcome = pin_host_key(
                self.ws,
                get_host(ledger, host.name),
                replace=False,
                confirm=host.host_key_fingerprint.__eq__,
                timeout=CONNECT_TIMEOUT_S,
                ledger=ledger,
            )
            if outcome != "pinned":
                raise RuntimeError(f"{host.name}: host key {fingerprint} {outcome}")

    @contextlib.contextmanager
    def ledger(self) -> Iterator[Ledger]:
        ledger = open_ledger(self.ws.storage(), load_acting_key(self.keys, self.key_name))
        try:
            yield ledger
        finally:
            ledger.close()

    def record(self, name: str, source: Path) -> None:
        with self.ledger() as ledger:
            register_model(ledger, name, resolve_source(str(source), hf_cache=None))

    def materialize(self, name: str) -> tuple[float, int, int]:
        """Seconds, bytes sent, and events appended by one materialization."""
        with self.ledger() as ledger:
            before = ledger.max_seq()
            started = time.perf_counter()
            model = ledger.load(ModelAsset, ModelAsset.id_for(name))
            host = get_host(ledger, self.host.name)
            # What `chassis model materialize` does: one connection for both.
            with contextlib.closing(host_connector(host, self.ws)) as connector:
                plan = plan_materialize(
                    ledger, self.ws, model, host, verify=False, connector=connector
                )
                result = materialize(ledger, self.ws, model, host, plan, connector=connector)
            seconds = time.perf_counter() - started
            return seconds, result.bytes_sent, ledger.max_seq() - before

    def clear_host(self) -> None:
        shutil.rmtree(self.host_root / "models", ignore_errors=True)


def sftp_upload(host: SSHTestHost, source: Path, target: Path) -> float:
    """What ``fabric.Connection.put`` does for each file, on a new connection."""
    started = time.perf_counter()
    client = paramiko.SSHClient()
    client.load_host_keys(str(host.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.address,
        port=host.port,
        username=host.user,
        key_filename=str(host.client_key),
        allow_agent=False,
        look_for_keys=False,
        timeout=CONNECT_TIMEOUT_S,
    )
    try:
        sftp = client.open_sftp()
        files = sorted(p for p in source.rglob("*") if p.is_file())
        dirs = {target} | {target / p.relative_to(source).parent for p in files}
        for directory in sorted(dirs, key=lambda d: len(d.parts)):
            with contextlib.suppress(OSError):  # already there
                sftp.mkdir(str(directory))
        for path in files:
            sftp.put(str(path), str(target / path.relative_to(source)))
        sftp.close()
    finally:
        client.close()
    return time.perf_counter() - started


def run(count: int) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="chassis-bench-models-") as tmp:
        base = Path(tmp)
        with bench_hosts(base / "sshd", 1) as (host,):
            lab = Lab(base, host)
            big = base / "big-model"
            big.mkdir()
            results.model_bytes = write_big_model(big)
            results.model_files = sum(1 for p in big.iterdir() if p.is_file())
            lab.record("big", big)
            sftp_target = base / "sftp-target"
            progress(
                f"transfer: {results.model_bytes / 1e6:.0f} MB in {results.model_files} files, "
                f"{count} round(s) per tool"
            )
            for i in range(count):
                order = ("chassis", "sftp") if i % 2 == 0 else ("sftp", "chassis")
                for tool in order:
                    if tool == "chassis":
                        lab.clear_host()
                        seconds, sent, events = lab.materialize("big")
                        if sent != results.model_bytes:
                            raise RuntimeError(f"chassis sent {sent} bytes")
                        results.chassis_s.append(seconds)
                        results.events_per_materialize = events
                    else:
                        shutil.rmtree(sftp_target, ignore_errors=True)
                        sftp_target.mkdir()
                        results.sftp_s.append(sftp_upload(host, big, sftp_target / "model"))
                    last = (results.chassis_s if tool == "chassis" else results.sftp_s)[-1]
                    progress(f"round {i + 1}: {tool} {last:.2f} s")
            lab.clear_host()

            many = base / "many-files"
            many.mkdir()
            write_many_files(many)
            lab.record("many", many)
            seconds, _, _ = lab.materialize("many")
            progress(f"skip path: {SMALL_FILES} files placed once in {seconds:.2f} s (untimed)")
            for _ in range(count + 2):
                seconds, sent, _ = lab.materialize("many")
                if sent:
                    raise RuntimeError(f"the skip path sent {sent} bytes")
                results.skip_s.append(seconds)
            progress("skip path: " + " ".join(f"{s:.3f}" for s in results.skip_s) + " s")
    return results


def report(results: Results, meta: dict[str, Any]) -> dict[str, Any]:
    ratio = statistics.median(s / c for s, c in zip(results.sftp_s, results.chassis_s, strict=True))
    skip = statistics.median(results.skip_s)
    mb = results.model_bytes / 1e6
    return {
        **meta,
        "model_bytes": results.model_bytes,
        "model_files": results.model_files,
        "chassis_s": results.chassis_s,
        "sftp_s": results.sftp_s,
        "chassis_mb_per_s": mb / statistics.median(results.chassis_s),
        "sftp_mb_per_s": mb / statistics.median(results.sftp_s),
        "throughput_ratio": {
            "value": ratio,
            "meaning": "raw SFTP time / Chassis time (Chassis throughput as a share of raw SFTP's)",
            "goal": f">= {TRANSFER_GOAL}",
            "verdict": "PASS" if ratio >= TRANSFER_GOAL else "FAIL",
        },
        "ledger_events_per_materialize": results.events_per_materialize,
        "skip_path": {
            "files": SMALL_FILES,
            "seconds": results.skip_s,
            "median_s": skip,
            "goal": f"< {SKIP_GOAL_S:g} s",
            "verdict": "PASS" if skip < SKIP_GOAL_S else "FAIL",
        },
    }


def rounds(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def print_text(data: dict[str, Any]) -> None:
    print(
        f"Chassis model materialize benchmark ({data['mode']}): one ssh host on loopback, "
        f"{data['cpu_count']} CPUs, Python {data['python']}, paramiko {data['paramiko']}, "
        f"{data['seconds']:.0f} s"
    )
    load = data["loadavg_1m_start_end"]
    print(f"  load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}")
    print()
    print(
        f"  transfer of {data['model_bytes'] / 1e6:.0f} MB in {data['model_files']} files "
        "(new connection each time):"
    )
    for label, key in (("Chassis materialize", "chassis"), ("raw SFTP put", "sftp")):
        rate = data[f"{key}_mb_per_s"]
        print(f"    {label:<21} {rate:7.1f} MB/s  [{rounds(data[f'{key}_s'])} s]")
    ratio = data["throughput_ratio"]
    print(
        f"    throughput ratio {ratio['value']:.2f}x ({ratio['meaning']}); goal {ratio['goal']}: "
        f"{ratio['verdict']}"
    )
    print(f"    ledger events per materialize: {data['ledger_events_per_materialize']}")
    skip = data["skip_path"]
    print()
    print(
        f"  skip path, {skip['files']} files already on the host: median {skip['median_s']:.3f} s "
        f"[{rounds(skip['seconds'])}]; goal {skip['goal']}: {skip['verdict']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round per tool")
    parser.add_argument("--rounds", type=int, help="transfer rounds per tool (default 3, quick 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    count = args.rounds or (1 if args.quick else 3)
    if count < 1:
        parser.error("--rounds must be >= 1")
    for name in (EnvVars.LEDGER, EnvVars.WORKSPACE, EnvVars.KEY, EnvVars.KEYS_DIR):
        os.environ.pop(name, None)
    start, load_start = time.perf_counter(), os.getloadavg()
    try:
        results = run(count)
    except SSHDUnavailable as e:
        print(f"model benchmark: cannot start an ssh host: {e}", file=sys.stderr)
        return 0
    meta = {
        "mode": "quick" if args.quick else "full",
        "rounds": count,
        "cpu_count": os.cpu_count() or 1,
        "python": platform.python_version(),
        "paramiko": paramiko.__version__,
        "host": socket.gethostname(),
        "seconds": time.perf_counter() - start,
        "loadavg_1m_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
    }
    data = report(results, meta)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_text(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
