"""When and how long to wait before trying a call again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc

# Codes after which a watch stream is opened again with its resume token: the gateway died or
# restarted (Envoy reports a cut stream as INTERNAL or UNKNOWN), or the connection dropped.
RECONNECT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE for calls that are safe to repeat, and how long a broken watch keeps reconnecting.

    Only idempotent calls are retried: reads, login, and submit (its request_id makes a repeat
    return the tasks of the first attempt instead of creating new ones).
    """

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    # A watch that worked once keeps reconnecting this long after its last message before giving up.
    reconnect_for_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s or self.reconnect_for_s < 0:
            raise ValueError("backoffs and reconnect_for_s must be >= 0 and initial <= max")

    def backoffs(self) -> Iterator[float]:
        """Pauses between attempts: exponential, capped, endless (callers decide when to stop)."""
        pause = self.initial_backoff_s
        while True:
            yield pause
            pause = min(self.max_backoff_s, pause * 2 or self.max_backoff_s)


NO_RETRY = RetryPolicy(attempts=1)
