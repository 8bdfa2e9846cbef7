"""Per-email brake on failed logins, and the size of the password-hashing queue, for one gateway.

Envoy limits logins and signups per client address (it sees the connection; it never parses bodies); the
email is in the body, so its limit lives here. Each gateway keeps its own buckets in memory: with N
gateways behind the edge a guesser gets at most N times the per-email budget, a known and small factor,
and Login keeps needing PostgreSQL only (a shared count in Redis would make every login fail with Redis).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from cachetools import TTLCache

from services.core.errors import ResourceExhausted
from services.core.settings import ConfigError, setting


@dataclass(frozen=True)
class LoginLimitsConfig:
    """Every value is a positive integer (the hash queue may be 0); the unit is in the name.

    Defaults are sized for bcrypt cost 12 on 2 cores (~125 ms of a core per hash: ~16 hashes/s for the
    machine, ~8/s for each of two gateways sharing it):
    - 10 failed logins in a row per email, then one more every 6 s (10 a minute): a person mistyping
      never meets it; a guesser gets ~14,000 tries a day per email and gateway instead of millions.
    - 50,000 emails tracked (~15 MB at most); the least recent beyond that are forgotten first, and a
      bucket is forgotten anyway once it would have refilled (it then equals a fresh one).
    - 2 hashing threads (one per core) and at most 8 calls waiting for one: a waiting call is answered
      within ~1 s, and the 9th is refused at once.
    """

    email_failures_burst: int = setting(
        "RTASK_LOGIN_EMAIL_FAILURES_BURST", 10, "failed logins in a row per email, then one more per refill"
    )
    email_failure_refill_ms: int = setting(
        "RTASK_LOGIN_EMAIL_FAILURE_REFILL_MS", 6_000, "one more failed login per email after this long"
    )
    tracked_emails: int = setting(
        "RTASK_LOGIN_TRACKED_EMAILS",
        50_000,
        "emails whose failed logins one gateway remembers (least recent forgotten first)",
    )
    hash_threads: int = setting(
        "RTASK_HASH_THREADS", 2, "bcrypt threads ([docs/login-protection.md](docs/login-protection.md))"
    )
    hash_queue_max: int = setting(
        "RTASK_HASH_QUEUE_MAX",
        8,
        "calls that may wait for a bcrypt thread; one more is refused at once with `RESOURCE_EXHAUSTED`",
    )

    def __post_init__(self) -> None:
        for field in fields(self):
            minimum = 0 if field.name == "hash_queue_max" else 1
            if getattr(self, field.name) < minimum:
                raise ConfigError(f"{ENV_NAMES[field.name]} must be at least {minimum}")


ENV_NAMES = {
    "email_failures_burst": "RTASK_LOGIN_EMAIL_FAILURES_BURST",
    "email_failure_refill_ms": "RTASK_LOGIN_EMAIL_FAILURE_REFILL_MS",
    "tracked_emails": "RTASK_LOGIN_TRACKED_EMAILS",
    "hash_threads": "RTASK_HASH_THREADS",
    "hash_queue_max": "RTASK_HASH_QUEUE_MAX",
}


class TooManyFailedLogins(ResourceExhausted):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed logins for this email, retry in {math.ceil(retry_after_s)} s")


class _Bucket:
    """Tokens left at a moment; refilled lazily on read."""

    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class EmailLimiter:
    """A token bucket per email: a login attempt takes a token before its hash, a success gives it back.

    Taking before the hash (not after a failure) means concurrent guesses cannot all slip past an almost
    empty bucket; giving it back means the owner's own logins never count. Unknown and registered emails
    are treated alike, so the limit reveals nothing about which exist.
    """

    def __init__(self, config: LoginLimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = float(config.email_failures_burst)
        self._refill_s = config.email_failure_refill_ms / 1000
        self._clock = clock
        # An entry untouched for a whole refill is full again, the same as absent: it may go.
        full_after_s = self._burst * self._refill_s
        self._buckets: TTLCache[str, _Bucket] = TTLCache(config.tracked_emails, full_after_s, timer=clock)

    def __len__(self) -> int:
        return len(self._buckets)

    def _current(self, email: str, now: float) -> _Bucket:
        bucket = self._buckets.get(email)
        if bucket is None:
            return _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) / self._refill_s)
        bucket.at = now
        return bucket

    def take(self, email: str) -> None:
        """Take one attempt from the email's budget, or raise TooManyFailedLogins naming when to retry."""
        now = self._clock()
        bucket = self._current(email, now)
        if bucket.tokens < 1:
            self._buckets[email] = bucket
            raise TooManyFailedLogins((1 - bucket.tokens) * self._refill_s)
        bucket.tokens -= 1
        self._buckets[email] = bucket  # (re)inserting restarts the entry's time to live

    def give_back(self, email: str) -> None:
        """The attempt succeeded: it does not count against the email."""
        now = self._clock()
        bucket = self._current(email, now)
        bucket.tokens = min(self._burst, bucket.tokens + 1)
        if bucket.tokens >= self._burst:
            self._buckets.pop(email, None)
        else:
            self._buckets[email] = bucket
