"""Worker credentials, kept apart from the user key.

- The worker key signs and verifies worker tokens. Only the schedulers hold it (WorkerKeyConfig).
- The enrolment secret lets a worker process get its first worker token. The workers hold it and the
  schedulers check it (EnrolmentConfig). It cannot sign anything: with it, a worker only asks a scheduler
  for a token for a worker id that was never enrolled, so it can never get a token for another worker's id.

Neither of them signs or verifies user tokens: a worker host that is compromised cannot mint a user token.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from services.core.settings import ConfigError, nested, setting

# A worker id is a Redis consumer name, a log field and a column value: short, printable, no separators
# that other formats give meaning to.
WORKER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MIN_SECRET_BYTES = 32


def worker_id_problem(worker_id: str) -> str | None:
    """Why worker_id is not acceptable, or None."""
    if WORKER_ID_PATTERN.fullmatch(worker_id) is None:
        return "worker_id: 1 to 128 characters of letters, digits and '.', '_', '-', ':'"
    return None


@dataclass(frozen=True)
class EnrolmentConfig:
    """The enrolment secret: what a worker presents to get its first token."""

    secret: bytes = setting(
        "RTASK_WORKER_ENROLMENT_SECRET",
        help="what a worker presents (`WorkerService.Enrol`) to get a token for a worker id never enrolled before "
        "(at least 32 bytes); it signs nothing. Or RTASK_WORKER_ENROLMENT_SECRET_FILE, a file holding it",
        file_env="RTASK_WORKER_ENROLMENT_SECRET_FILE",
        shown_default="`make up`: generated into `.rtask/worker_enrolment_secret` (mode 0600)",
        repr=False,
    )

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"RTASK_WORKER_ENROLMENT_SECRET must be at least {MIN_SECRET_BYTES} bytes")

    def matches(self, presented: str) -> bool:
        """Constant-time comparison, so the secret cannot be guessed a byte at a time."""
        return hmac.compare_digest(self.secret, presented.encode())


@dataclass(frozen=True)
class WorkerKeyConfig:
    """The worker key (HS256) and how long the worker tokens it signs live; schedulers only."""

    jwt_secret: bytes = setting(
        "RTASK_WORKER_KEY",
        help="the worker key: HS256 secret (at least 32 bytes) of worker tokens, which schedulers issue and verify; "
        "or RTASK_WORKER_KEY_FILE, a file holding it",
        file_env="RTASK_WORKER_KEY_FILE",
        shown_default="`make up`: generated into `.rtask/worker_key` (mode 0600)",
        repr=False,
    )
    enrolment: EnrolmentConfig = nested()
    issuer: str = setting("RTASK_JWT_ISSUER", "resilienttask", "the `iss` of every token issued and accepted")
    token_ttl_s: int = setting(
        "RTASK_WORKER_TOKEN_TTL_S", 3600, "worker token lifetime, seconds; workers renew at half of it"
    )

    def __post_init__(self) -> None:
        if len(self.jwt_secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the worker key (RTASK_WORKER_KEY) must be at least {MIN_SECRET_BYTES} bytes")
        if self.token_ttl_s < 60:
            raise ConfigError("RTASK_WORKER_TOKEN_TTL_S must be at least 60 seconds")
