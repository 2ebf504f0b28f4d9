"""Release bundles in an S3-compatible object store (``[releases] store =
"s3://…"``), against a real server (``rclone serve s3``, which checks every
request's signature), on SQLite and PostgreSQL ledgers.

Reproduced before: only a PostgreSQL ledger could share bundles, and a
fresh runner on any other ledger could not roll back ("the bundle of
release v1 is gone from the store"). Now the object store serves any ledger,
is trusted for availability only (every bundle read back is checked against
its recorded sha256), and a store that refuses a bundle registers nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from chassis.bundles import sha256_file
from chassis.sample_app import build_sample_release
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY, get, port_of
from tests.engine.test_lifecycle import backend  # noqa: F401 - the backend fixture
from tests.s3server import S3Server, s3_server

BUCKET = "chassis-bundles"


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A server with an empty bucket; this process holds its credentials
    the usual way (the environment), and nothing else of AWS."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    with s3_server(tmp_path) as server:
        server.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        yield server


def use_store(shop: Path, store: str) -> None:
    stack = shop / "chassis.toml"
    stack.write_text(f'[releases]\nstore = "{store}"\n\n' + stack.read_text())


def store_of(server: S3Server) -> str:
    return f"s3://{BUCKET}/shop?endpoint={server.endpoint}"


def stored_object(server: S3Server, sha256: str) -> Path:
    return server.data / BUCKET / "shop" / "bundles" / f"{sha256}.tar.gz"


def bundle(shop: Path, version: str) -> Path:
    return next((shop.parent / "dist").glob(f"*{version}*.tar.gz"))


def forget_bundles(shop: Path) -> None:
    """This workspace's bundle cache, as a fresh CI runner has it."""
    shutil.rmtree(shop / ".chassis" / "bundles")


@pytest.fixture
def stored(run: Runner, backend: str, shop: Path, s3: S3Server) -> Path:  # noqa: F811
    """``shop`` on ``backend`` with its store in the bucket; v1 and v2 added
    again, which puts their bundles there (they were added before the
    store was named)."""
    use_store(shop, store_of(s3))
    for version in ("v1", "v2"):
        run.ok("release", "add", version, "--artifact", str(bundle(shop, version)))
        sha = sha256_file(bundle(shop, version))
        assert stored_object(s3, sha).read_bytes() == bundle(shop, version).read_bytes()
    return shop


def test_a_fresh_runner_rolls_back_from_the_object_store(
    run: Runner, stored: Path, backend: str  # noqa: F811
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    forget_bundles(stored)
    rolled = json.loads(run.ok("rollback", "shop", "--env", "dev", "--json").stdout)
    assert rolled["status"] == "deployed", rolled
    code, body = get(port_of(stored, "api"), "/healthz")
    assert code == 200 and "v1" in body
    fetched = stored / ".chassis" / "bundles" / f"{sha256_file(bundle(stored, 'v1'))}.tar.gz"
    assert fetched.read_bytes() == bundle(stored, "v1").read_bytes()
    run.ok("ledger", "verify")


def test_a_new_release_goes_to_the_store_before_it_is_registered(
    run: Runner, stored: Path, s3: S3Server, tmp_path: Path
) -> None:
    artifact, sha = build_sample_release(tmp_path / "more", "v4")
    run.ok("release", "add", "v4", "--artifact", str(artifact))
    assert stored_object(s3, sha).read_bytes() == artifact.read_bytes()
    forget_bundles(stored)
    run.ok(*DEPLOY, "--release", "v4")
    code, body = get(port_of(stored, "api"), "/healthz")
    assert code == 200 and "v4" in body


def test_a_damaged_object_is_refused_and_nothing_is_written(
    run: Runner, stored: Path, s3: S3Server
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    forget_bundles(stored)
    stored_object(s3, sha256_file(bundle(stored, "v1"))).write_bytes(b"not the bundle")
    result = run("rollback", "shop", "--env", "dev")
    assert result.exit_code == 3, result.stderr
    assert "does not match" in result.stderr and "release add v1" in result.stderr
    assert not any((stored / ".chassis" / "bundles").glob("*.tar.gz"))
    assert not any((stored / ".chassis" / "bundles").glob(".*"))
    code, body = get(port_of(stored, "api"), "/healthz")
    assert code == 200 and "v2" in body  # still running what it ran


def test_a_store_that_refuses_the_bundle_registers_nothing(
    run: Runner, stored: Path, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact, sha = build_sample_release(tmp_path / "more", "v4")
    wrong = "wrong" + s3.secret_key[5:]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    refused = run("release", "add", "v4", "--artifact", str(artifact))
    assert refused.exit_code == 3, refused.stderr
    assert f"s3://{BUCKET}/shop" in refused.stderr and "403" in refused.stderr
    assert "check the credentials" in refused.stderr
    assert wrong not in refused.stderr + refused.stdout
    assert not stored_object(s3, sha).exists()
    listed = run.ok("release", "list", "--json").stdout
    assert "v4" not in {r["label"] for r in json.loads(listed)}

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    anonymous = run("release", "add", "v4", "--artifact", str(artifact))
    assert anonymous.exit_code == 3 and "no credentials" in anonymous.stderr


def test_a_missing_bucket_and_an_unreachable_server_are_named(
    run: Runner, shop: Path, s3: S3Server, tmp_path: Path
) -> None:
    artifact, _ = build_sample_release(tmp_path / "more", "v4")
    stack = (shop / "chassis.toml").read_text()
    use_store(shop, f"s3://no-such-bucket?endpoint={s3.endpoint}")
    missing = run("release", "add", "v4", "--artifact", str(artifact))
    assert missing.exit_code == 3
    assert "s3://no-such-bucket" in missing.stderr and "does not exist" in missing.stderr
    (shop / "chassis.toml").write_text(stack)
    use_store(shop, f"s3://{BUCKET}?endpoint=http://127.0.0.1:9")
    unreachable = run("release", "add", "v4", "--artifact", str(artifact))
    assert unreachable.exit_code == 3
    assert f"s3://{BUCKET} at http://127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("s3://AKIAEXAMPLE:hunter2hunter2@bundles", "credentials never go in chassis.toml"),
        ("s3://bundles?endpoint=http://AKIA:hunter2hunter2@h:9000", "credentials never go"),
        ("https://bundles.example", 'expected "ledger", "workspace" or "s3://BUCKET'),
        ("s3://Bundles", "bucket 'Bundles': expected 3-63 lowercase"),
        ("s3://bundles/a/../b", "prefix 'a/../b'"),
        ("s3://bundles?acl=public", "unknown option 'acl' (expected endpoint, region)"),
        ("s3://bundles?endpoint=ftp://h", "expected http(s)://HOST[:PORT]"),
    ],
)
def test_stack_validate_names_a_bad_store(
    run: Runner, workspace: Path, store: str, expected: str
) -> None:
    use_store(workspace, store)
    result = run("stack", "validate")
    assert result.exit_code != 0
    said = result.stderr + result.stdout
    assert "releases.store" in said and expected in said, said
    assert "hunter2" not in said


def test_doctor_checks_the_object_store(
    run: Runner, shop: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def store_check() -> dict[str, str]:
        checks = json.loads(run("doctor", "--env", "dev", "--json").stdout)
        found: dict[str, str] = next(c for c in checks if c["name"] == "release store")
        return found

    use_store(shop, store_of(s3))
    assert store_check()["status"] == "pass"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" + s3.secret_key[5:])
    refused = store_check()
    assert refused["status"] == "fail" and "403" in refused["detail"]
    assert s3.secret_key[5:] not in json.dumps(refused)
