"""A workspace: a directory with ``chassis.toml``, its state in ``.chassis/``.

Found from ``--workspace``/``CHASSIS_WORKSPACE`` or by walking up from the
current directory, like git.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from chassis.config.env import EnvVars
from chassis.errors import WorkspaceError
from chassis.toml_files import load_toml
from ledger.storage import StorageConfig

STACK_FILE = "chassis.toml"
STATE_DIR = ".chassis"
SETTINGS_FILE = "workspace.json"


class WorkspaceSettings(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    root_keyid: str
    """Pinned root of trust: verification fails if the ledger's root differs."""
    default_key: str
    ledger: str | None = None
    """The ledger URL ``chassis init`` was given (``--ledger`` or
    ``CHASSIS_LEDGER``), never with a password; absent (files written before
    it existed, or the default ledger) means ``[ledger] url`` or the default."""


def keys_dir() -> Path:
    """Where private keys live: outside any workspace, so never committed."""
    explicit = os.environ.get(EnvVars.KEYS_DIR)
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get(EnvVars.XDG_CONFIG_HOME) or str(Path.home() / ".config")
    return Path(config_home) / "chassis" / "keys"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def stack_file(self) -> Path:
        return self.root / STACK_FILE

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def settings_path(self) -> Path:
        return self.state_dir / SETTINGS_FILE

    @classmethod
    def find(cls, explicit: Path | None = None) -> Workspace:
        """The workspace at ``explicit``, or the nearest one above the cwd."""
        if explicit is not None:
            root = explicit.expanduser().absolute()
            if not (root / STATE_DIR / SETTINGS_FILE).is_file():
                raise WorkspaceError(f"{root}: not a chassis workspace (run 'chassis init {root}')")
            return cls(root)
        here = Path.cwd()
        for candidate in (here, *here.parents):
            if (candidate / STATE_DIR / SETTINGS_FILE).is_file():
                return cls(candidate)
        raise WorkspaceError(
            f"{here}: not inside a chassis workspace (run 'chassis init' or pass --workspace)"
        )

    def settings(self) -> WorkspaceSettings:
        try:
            return msgspec.json.decode(self.settings_path.read_bytes(), type=WorkspaceSettings)
        except (OSError, msgspec.DecodeError) as e:
            raise WorkspaceError(
                f"{self.settings_path}: unreadable workspace settings ({e})"
            ) from None

    def stack(self) -> dict[str, object]:
        """The raw stack file (validated into a spec by the stack module)."""
        if not self.stack_file.exists():
            return {}
        try:
            return load_toml(self.stack_file)
        except tomllib.TOMLDecodeError as e:
            raise WorkspaceError(f"{self.stack_file}: invalid TOML: {e}") from None

    def ledger_url(self) -> str:
        """``CHASSIS_LEDGER``, else the URL ``chassis init`` was given (kept in
        ``workspace.json``), else ``[ledger] url``, else ``.chassis/ledger.db``."""
        from_env = os.environ.get(EnvVars.LEDGER)
        if from_env:
            return from_env
        remembered = self.settings().ledger if self.settings_path.is_file() else None
        if remembered:
            return remembered
        return self.stack_ledger_url() or self.default_ledger_url

    @property
    def default_ledger_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'ledger.db'}"

    def stack_ledger_url(self) -> str | None:
        """``[ledger] url`` of the stack file, if any."""
        section = self.stack().get("ledger", {})
        if not isinstance(section, dict):
            raise WorkspaceError(f"{self.stack_file}: [ledger] must be a table")
        url = section.get("url")
        if url is not None and not isinstance(url, str):
            raise WorkspaceError(f"{self.stack_file}: ledger.url: expected a string")
        return url or None

    def storage(self) -> StorageConfig:
        return StorageConfig.from_url(self.ledger_url())
