"""A shared ledger shares its release bundles.

Reproduced before: a teammate on the same PostgreSQL ledger could not roll
back ("the bundle of release v1 is gone from the store; add it again with
chassis release add …"), and running exactly that printed the release id
and copied nothing. Now bundles live beside a PostgreSQL ledger (chunked,
sha256-checked on the way back), and adding the same content again restores
a missing bundle on any ledger.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY, get, port_of
from tests.engine.test_lifecycle import backend  # noqa: F401 - the backend fixture

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow


def forget_bundles(shop: Path) -> None:
    """This workspace's bundle store, as a fresh CI runner or a teammate has it."""
    shutil.rmtree(shop / ".chassis" / "bundles")


def v1_bundle(shop: Path) -> Path:
    return next((shop.parent / "dist").glob("*v1*.tar.gz"))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_shared_ledger_rolls_back_without_the_local_bundle(
    run: Runner,
    backend: str,  # noqa: F811
    shop: Path,
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    forget_bundles(shop)
    rolled = json.loads(run.ok("rollback", "shop", "--env", "dev", "--json").stdout)
    assert rolled["status"] == "deployed", rolled
    code, body = get(port_of(shop, "api"), "/healthz")
    assert code == 200 and "v1" in body
    run.ok("ledger", "verify")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_tampered_shared_bundle_is_refused(
    run: Runner,
    backend: str,  # noqa: F811
    shop: Path,
) -> None:
    import psycopg

    from ledger.storage import StorageConfig

    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    forget_bundles(shop)
    url = os.environ["CHASSIS_LEDGER"]
    schema = StorageConfig.from_url(url).schema
    with psycopg.connect(url.split("?")[0], autocommit=True) as pg:
        pg.execute(
            f'UPDATE "{schema}".chassis_bundle_chunks SET data = %s WHERE idx = 0',
            (b"not the bundle",),
        )
    result = run("rollback", "shop", "--env", "dev")
    assert result.exit_code == 3, result.stderr
    assert "does not match" in result.stderr and "release add v1" in result.stderr
    assert not any((shop / ".chassis" / "bundles").glob("*.tar.gz"))


def test_adding_the_same_release_again_restores_a_missing_bundle(
    run: Runner,
    backend: str,  # noqa: F811
    shop: Path,
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    forget_bundles(shop)
    if backend == "sqlite":
        refused = run("rollback", "shop", "--env", "dev")
        assert refused.exit_code == 3 and "release add v1" in refused.stderr
    run.ok("release", "add", "v1", "--artifact", str(v1_bundle(shop)))
    assert any((shop / ".chassis" / "bundles").glob("*.tar.gz"))
    run.ok("rollback", "shop", "--env", "dev")
    code, body = get(port_of(shop, "api"), "/healthz")
    assert code == 200 and "v1" in body
