"""Worker credentials, kept apart from the user key.

- The worker key signs and verifies worker tokens. Only the schedulers hold it (WorkerKeyConfig).
- The enrolment secret lets a worker process get its first worker token. The workers hold it and the
  schedulers check it (EnrolmentConfig). It cannot sign anything: with it, a worker only asks a scheduler
  for a token for a worker id that was never enrolled, so it can never get a token for another worker's id.

Neither of them signs or verifies user tokens: a worker host that is compromised cannot mint a user token.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.core.config import ConfigError

# A worker id is a Redis consumer name, a log field and a column value: short, printable, no separators
# that other formats give meaning to.
WORKER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MIN_SECRET_BYTES = 32


def worker_id_problem(worker_id: str) -> str | None:
    """Why worker_id is not acceptable, or None."""
    if WORKER_ID_PATTERN.fullmatch(worker_id) is None:
        return "worker_id: 1 to 128 characters of letters, digits and '.', '_', '-', ':'"
    return None


def _secret(env: Mapping[str, str], name: str, file_name: str) -> bytes:
    """The secret in variable `name`, or in the file that `file_name` names; at least MIN_SECRET_BYTES long."""
    value = env.get(name, "")
    path = env.get(file_name, "")
    if not value and path:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    if not value:
        raise ConfigError(f"{name} or {file_name} is required")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes")
    return value.encode()


@dataclass(frozen=True)
class EnrolmentConfig:
    """The enrolment secret: what a worker presents to get its first token."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the enrolment secret must be at least {MIN_SECRET_BYTES} bytes")

    def matches(self, presented: str) -> bool:
        """Constant-time comparison, so the secret cannot be guessed a byte at a time."""
        return hmac.compare_digest(self.secret, presented.encode())

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> EnrolmentConfig:
        return cls(secret=_secret(env, "RTASK_WORKER_ENROLMENT_SECRET", "RTASK_WORKER_ENROLMENT_SECRET_FILE"))


@dataclass(frozen=True)
class WorkerKeyConfig:
    """The worker key (HS256) and how long the worker tokens it signs live; schedulers only."""

    jwt_secret: bytes
    enrolment: EnrolmentConfig
    issuer: str = "resilienttask"
    token_ttl_s: int = 3600

    def __post_init__(self) -> None:
        if len(self.jwt_secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the worker key must be at least {MIN_SECRET_BYTES} bytes")
        if self.token_ttl_s < 60:
            raise ConfigError("RTASK_WORKER_TOKEN_TTL_S must be at least 60 seconds")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WorkerKeyConfig:
        raw_ttl = env.get("RTASK_WORKER_TOKEN_TTL_S", "") or "3600"
        try:
            ttl_s = int(raw_ttl)
        except ValueError as exc:
            raise ConfigError(f"RTASK_WORKER_TOKEN_TTL_S must be an integer, got {raw_ttl!r}") from exc
        return cls(
            jwt_secret=_secret(env, "RTASK_WORKER_KEY", "RTASK_WORKER_KEY_FILE"),
            enrolment=EnrolmentConfig.from_env(env),
            issuer=env.get("RTASK_JWT_ISSUER", "resilienttask"),
            token_ttl_s=ttl_s,
        )
