"""JWT HS256 access tokens for users and workers, each signed with its own key.

User tokens are signed with the user key (AuthConfig.jwt_secret), which only the gateways and Envoy hold.
Worker tokens are signed with the worker key (WorkerKeyConfig), which only the schedulers hold: they issue
a worker its token at enrolment (services/scheduler/enrolment.py) and verify it on every WorkerService call.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import jwt

from services.core.config import AuthConfig
from services.core.errors import Unauthenticated

ALGORITHM = "HS256"
# Workers use their own audience, so a user token can never call WorkerService and vice versa.
WORKER_AUDIENCE = "resilienttask-workers"
WORKER_TOKEN_TTL_S = 3600
# Our tokens are ~300 characters; anything far longer is refused before it is parsed.
MAX_TOKEN_CHARS = 4096
_REQUIRED_CLAIMS = ["sub", "iat", "exp", "iss", "aud", "jti"]
_INVALID = "invalid or expired token"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: float  # seconds since the epoch


class SigningKey(Protocol):
    """What signs and verifies one kind of token: the user key (AuthConfig) or the worker key."""

    @property
    def jwt_secret(self) -> bytes: ...

    @property
    def issuer(self) -> str: ...


# A token in, its (subject, expiry) out, or Unauthenticated.
Verifier = Callable[[str], tuple[str, float]]


def _mint(config: SigningKey, subject: str, audience: str, ttl_s: int) -> IssuedToken:
    now = int(time.time())
    claims = {
        "sub": subject,
        "iat": now,
        "exp": now + ttl_s,
        "iss": config.issuer,
        "aud": audience,
        "jti": uuid.uuid4().hex,
    }
    return IssuedToken(jwt.encode(claims, config.jwt_secret, algorithm=ALGORITHM), float(now + ttl_s))


def mint_user_token(config: AuthConfig, user_id: str) -> IssuedToken:
    return _mint(config, user_id, config.audience, config.token_ttl_s)


def mint_worker_token(config: SigningKey, worker_id: str, ttl_s: int = WORKER_TOKEN_TTL_S) -> IssuedToken:
    """A worker token; only the schedulers hold the worker key that signs it."""
    return _mint(config, worker_id, WORKER_AUDIENCE, ttl_s)


def _is_uuid(value: str) -> bool:
    """User tokens name a user id; anything else in `sub` was never minted by us."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def verify_token(config: SigningKey, token: str, audience: str) -> str:
    """Return the subject of a valid token; any defect is Unauthenticated with one generic message."""
    return verify_token_claims(config, token, audience)[0]


class VerifiedTokens:
    """Tokens already verified, until they expire: a worker or a user sends the same token on every call,
    and checking its signature and claims again each time is pure overhead on the hot path."""

    def __init__(self, config: SigningKey, audience: str, capacity: int = 4096) -> None:
        self._verify: Verifier = lambda token: verify_token_claims(config, token, audience)
        self._capacity = capacity
        self._subjects: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._subjects)

    def subject(self, token: str) -> str:
        """Like verify_token; a token that failed is checked again next time (and fails again)."""
        known = self._subjects.get(token)
        if known is not None and time.time() < known[1]:
            self._subjects.move_to_end(token)
            return known[0]
        subject, expires_at = self._verify(token)
        self._subjects[token] = (subject, expires_at)
        if len(self._subjects) > self._capacity:
            self._subjects.popitem(last=False)
        return subject


def verify_token_claims(
    config: SigningKey, token: str, audience: str, *, expired_for_at_most_s: int = 0
) -> tuple[str, float]:
    """The subject and expiry of a valid token; any defect is Unauthenticated with one generic message.

    Only HS256 is accepted (so `alg=none` and every other algorithm fail), every claim is required,
    `iat` may not lie in the future, and `aud` must be exactly the one expected audience: a token
    listing several audiences would otherwise open both the user and the worker API. (With separate keys,
    a token of one kind fails the other's signature check first; the audience is a second wall.)
    expired_for_at_most_s accepts a token that expired that long ago at most: only for a worker renewing
    its own token after an outage outlasted it (the signature still proves we issued it to that id).
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated(_INVALID)
    try:
        claims = jwt.decode(
            token,
            config.jwt_secret,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=config.issuer,
            leeway=expired_for_at_most_s,
            options={"require": _REQUIRED_CLAIMS, "strict_aud": True, "verify_signature": True},
        )
    except jwt.PyJWTError as exc:
        raise Unauthenticated(_INVALID) from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or (audience != WORKER_AUDIENCE and not _is_uuid(subject)):
        raise Unauthenticated(_INVALID)
    return subject, float(claims["exp"])
