"""The demo's sample application: three tiny HTTP services in a release tree.

:func:`write_sample_app` writes a release source tree that ``make demo`` and
the deploy tests bundle and ship. Its scripts are copies of the standalone,
stdlib-only :mod:`chassis.sample_app.service` (its file name picks the role),
because they run on hosts that have ``python3`` but not Chassis:

    VERSION          the version string
    app/gateway.py   python3 app/gateway.py --port 8080 --upstream 127.0.0.1:8081
    app/api.py       python3 app/api.py --port 8081
    app/worker.py    python3 app/worker.py
    app/score.py     python3 app/score.py  (the evolution fixtures' score command)

Behaviour switches read from the environment (the release's rendered config):
``FAIL_HEALTH=1`` (``/healthz`` answers 503) and ``CRASH_ON_START=1`` (exit 3).
"""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

from chassis.bundles import build_bundle

__all__ = ["SERVICES", "build_sample_release", "service_source", "write_sample_app"]

SERVICES = ("gateway", "api", "worker")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def service_source() -> bytes:
    """The bytes of the standalone service program shipped as each ``app/*.py``."""
    return resources.files(__name__).joinpath("service.py").read_bytes()


def _check_version(version: str) -> None:
    if not _VERSION.fullmatch(version):
        raise ValueError(f"sample app version must match {_VERSION.pattern}, got {version!r}")


def write_sample_app(dest: Path, version: str) -> Path:
    """Write the sample app's release tree into ``dest`` (created if missing); return it.

    Raises ``ValueError`` when ``version`` is not a short token of letters,
    digits and ``._+-`` (it appears in health bodies and file names).
    """
    _check_version(version)
    source = service_source()
    app = dest / "app"
    app.mkdir(parents=True, exist_ok=True)
    for name in (*SERVICES, "score"):
        script = app / f"{name}.py"
        script.write_bytes(source)
        script.chmod(0o755)
    version_file = dest / "VERSION"
    version_file.write_text(f"{version}\n", encoding="utf-8")
    version_file.chmod(0o644)
    return dest


def build_sample_release(workdir: Path, version: str) -> tuple[Path, str]:
    """Write a fresh tree ``workdir/sample-app-VERSION/`` and bundle it as
    ``workdir/sample-app-VERSION.tar.gz``; return (bundle path, sha256 hex).

    The same version always gives the same bundle bytes (on one zlib).
    Raises ``ValueError`` for a bad version, :class:`~chassis.bundles.BundleError`
    if the bundle cannot be built.
    """
    _check_version(version)
    tree = workdir / f"sample-app-{version}"
    bundle = workdir / f"sample-app-{version}.tar.gz"
    if tree.exists():
        shutil.rmtree(tree)
    write_sample_app(tree, version)
    return bundle, build_bundle(tree, bundle)
