"""A token bucket that grants part of a request: how many of n lines may pass now (the rest are dropped, not queued).

Standard library only: a handler's child process uses it too.
"""

from __future__ import annotations

import time


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up; `take(n)` returns how many of n it grants."""

    __slots__ = ("_at", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self, n: int = 1) -> int:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        granted = min(n, int(self._tokens))
        self._tokens -= granted
        return granted

    def available(self) -> int:
        """Tokens there are now, without taking any."""
        return int(min(self.burst, self._tokens + (time.monotonic() - self._at) * self.rate_per_s))
