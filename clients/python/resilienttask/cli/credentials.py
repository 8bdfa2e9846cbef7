"""The token cache: one token per server, in the user's config folder, readable by the user only (0600).

Folder: $RTASK_CONFIG_DIR, else $XDG_CONFIG_HOME/resilienttask, else ~/.config/resilienttask.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILE_NAME = "credentials.json"


def config_dir(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("RTASK_CONFIG_DIR"):
        return Path(env["RTASK_CONFIG_DIR"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "resilienttask"


@dataclass(frozen=True)
class Credential:
    """A cached login for one server."""

    email: str
    token: str
    expires_at: datetime | None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)


class CredentialStore:
    """Reads and atomically rewrites the credentials file; the folder is created 0700, the file 0600."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / FILE_NAME

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read {self.path}: {exc}; delete it and log in again") from exc
        servers = data.get("servers") if isinstance(data, dict) else None
        return servers if isinstance(servers, dict) else {}

    def get(self, server: str) -> Credential | None:
        entry = self._load().get(server)
        if not isinstance(entry, dict) or not entry.get("token"):
            return None
        expires = entry.get("expires_at")
        return Credential(
            email=str(entry.get("email", "")),
            token=str(entry["token"]),
            expires_at=datetime.fromisoformat(expires) if expires else None,
        )

    def put(self, server: str, credential: Credential) -> None:
        servers = self._load()
        servers[server] = {
            "email": credential.email,
            "token": credential.token,
            "expires_at": credential.expires_at.isoformat() if credential.expires_at else None,
        }
        self._write(servers)

    def remove(self, server: str) -> bool:
        servers = self._load()
        if servers.pop(server, None) is None:
            return False
        self._write(servers)
        return True

    def _write(self, servers: dict[str, Any]) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file 0600 before anything is written; the rename makes the update atomic.
        fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"servers": servers}, handle, indent=2)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
