"""When and how long to wait before trying a call again, or reopening a broken stream."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from resilienttask.errors import DeadlineExceeded, Unavailable, from_rpc_error

# Codes after which a stream (a watch, a followed log) is opened again where it stopped: the gateway died or
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

    def ceilings(self) -> Iterator[float]:
        """The longest pause before each attempt: exponential from initial_backoff_s, capped at max_backoff_s."""
        ceiling = self.initial_backoff_s
        while True:
            yield ceiling
            ceiling = min(self.max_backoff_s, ceiling * 2 or self.max_backoff_s)

    def backoffs(self, rng: random.Random | None = None) -> Iterator[float]:
        """Pauses between attempts, endless (callers decide when to stop), each drawn uniformly between 0 and its
        ceiling ("full jitter"): clients cut off together (a gateway died under many watches) come back spread
        out instead of all at once."""
        draw = (rng or _RANDOM).uniform
        for ceiling in self.ceilings():
            yield draw(0.0, ceiling)


NO_RETRY = RetryPolicy(attempts=1)
_RANDOM = random.Random()


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status of a failed call: a blocking call's error is also its grpc.Call, an asyncio one an AioRpcError."""
    return error.code() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None


class Reconnect:
    """When a broken stream (a watch, a followed log) is opened again, and when to give up instead.

    Pauses follow the policy's backoffs (full jitter), starting over once a message arrives. Before the first
    message the stream gets `attempts` tries, as a unary call would; once it worked, it keeps reconnecting
    until it has been silent for `reconnect_for_s`. A deadline (monotonic seconds) ends it with DeadlineExceeded.
    """

    def __init__(self, policy: RetryPolicy, what: str, deadline: float | None = None) -> None:
        self.policy = policy
        self.what = what
        self.deadline = deadline
        self.connected = False
        self.reconnects = 0
        self._failures = 0
        self._last_message = time.monotonic()
        self._pauses = policy.backoffs()

    def heard(self) -> None:
        """A message arrived: the stream works, so later failures start over from the shortest pause."""
        self.connected = True
        self._failures = 0
        self._last_message = time.monotonic()
        self._pauses = self.policy.backoffs()

    def pause_after(self, error: grpc.RpcError | None) -> float:
        """Seconds to wait before reopening the stream after it ended (error None: it ended cleanly).

        Raises the SDK error instead when the failure is not one a reconnect cures, or when the stream has
        been failing for too long.
        """
        code = status_code(error) if error is not None else None
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and self.deadline is not None:
            raise DeadlineExceeded(f"the {self.what} reached its deadline")
        if error is not None and code not in RECONNECT_CODES:
            raise from_rpc_error(error)
        self._failures += 1
        self.reconnects += 1
        if not self.connected and self._failures >= self.policy.attempts:
            raise from_rpc_error(error) if error is not None else Unavailable(f"the {self.what} stream ended at once")
        if self.connected and time.monotonic() - self._last_message > self.policy.reconnect_for_s:
            raise Unavailable(f"{self.what} could not reconnect for {self.policy.reconnect_for_s:g}s")
        pause = next(self._pauses)
        if self.deadline is not None:
            pause = min(pause, max(0.0, self.deadline - time.monotonic()))
        return pause
