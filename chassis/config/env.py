"""Environment variable names, in one place (options and factories read these)."""

from __future__ import annotations


class EnvVars:
    WORKSPACE = "CHASSIS_WORKSPACE"
    """Workspace directory (default: the current directory, then its parents)."""
    LEDGER = "CHASSIS_LEDGER"
    """Ledger URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB?schema=NAME."""
    KEYS_DIR = "CHASSIS_KEYS_DIR"
    """Private key directory (default: $XDG_CONFIG_HOME/chassis/keys)."""
    KEY = "CHASSIS_KEY"
    """Name or key id of the acting key (default: the workspace's default key)."""
    SIGNING_KEY = "CHASSIS_SIGNING_KEY"
    """The acting private key itself (CI): PKCS#8 PEM, its base64, or the 32-byte
    seed as base64 or hex. Used instead of any key file when set; never printed."""
    FULL_EXIT = "CHASSIS_FULL_EXIT"
    """``1``: end the process with the interpreter's full teardown (the
    console script otherwise skips it once the command is done)."""
    XDG_CONFIG_HOME = "XDG_CONFIG_HOME"
