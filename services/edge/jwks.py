"""The JWKS Envoy verifies tokens with: the services' HS256 secret as an `oct` key, written at start-up only."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any


def jwks_document(secret: bytes) -> dict[str, Any]:
    """A key set with one symmetric key; no `kid`, so Envoy tries it for every token (ours carry none)."""
    key = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    return {"keys": [{"kty": "oct", "alg": "HS256", "k": key}]}


def write_jwks(path: Path, secret: bytes) -> Path:
    """Write the key set readable by its owner only, replacing any earlier file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(jwks_document(secret), handle)
    os.replace(partial, path)
    return path
