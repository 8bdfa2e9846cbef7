"""Password rules and bcrypt hashing on a small thread pool, so a hash never stalls the event loop."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from resilienttask.v1 import auth_pb2
from services.core.errors import ResourceExhausted
from services.core.field_limits import rule

# The contract's bounds (SignupRequest and LoginRequest declare the same). bcrypt reads only the first 72 bytes;
# longer passwords are refused rather than silently cut.
PASSWORD = rule(auth_pb2.SignupRequest, "password")
MIN_PASSWORD_BYTES = PASSWORD.limits.min_bytes or 0
MAX_PASSWORD_BYTES = PASSWORD.limits.max_bytes or 0

T = TypeVar("T")


class HashQueueFull(ResourceExhausted):
    """Every hashing thread is busy and the waiting line is full: the call is refused at once.

    RESOURCE_EXHAUSTED rather than UNAVAILABLE: the edge and the SDK retry UNAVAILABLE, which would turn
    one refused login into several more waiting in the same full line; this says "back off".
    """

    def __init__(self, waiting: int) -> None:
        super().__init__(f"password hashing queue full ({waiting} waiting), retry later")


def password_bytes(password: str) -> bytes:
    """The UTF-8 bytes of a password that meets the length rule; InvalidArgument naming the field otherwise."""
    return PASSWORD.text("password", password).encode("utf-8")


def _hash(password: bytes, cost: int) -> bytes:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost))


class PasswordHasher:
    """bcrypt hash and verify, run on a bounded pool of threads (bcrypt releases the GIL while it works).

    Callers queue on an asyncio semaphore rather than inside the executor: a call whose client gave up
    (deadline, disconnect) is cancelled while it waits and never costs a hash. At most max_waiting calls
    wait for a thread; one more is refused with HashQueueFull at once, so a flood of logins is answered
    in microseconds instead of queueing every caller (the flood's and everyone else's) for seconds.
    """

    def __init__(self, cost: int, *, threads: int = 2, max_waiting: int = 8) -> None:
        if threads < 1 or max_waiting < 0:
            raise ValueError("a hasher needs at least one thread and a non-negative queue bound")
        self._cost = cost
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bcrypt")
        self._slots = asyncio.Semaphore(threads)
        self._max_waiting = max_waiting
        self._waiting = 0
        # Logins for unknown emails are checked against this hash of a random password, so they cost
        # as much as a wrong password and the two cannot be told apart by timing. Computed in the pool.
        self._dummy_hash: Future[bytes] = self._executor.submit(_hash, secrets.token_bytes(32), cost)

    @property
    def waiting(self) -> int:
        """Calls waiting for a hashing thread now (not counting those being hashed)."""
        return self._waiting

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._slots.locked():
            if self._waiting >= self._max_waiting:
                raise HashQueueFull(self._waiting)
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._slots.release()

    async def hash(self, password: bytes) -> str:
        """A salted bcrypt hash at the configured cost, as text ($2b$...)."""
        hashed = await self._run(_hash, password, self._cost)
        return hashed.decode("ascii")

    async def verify(self, password: bytes, hashed: str | None) -> bool:
        """True when password matches hashed; with no hash (unknown user) do the same work and return False."""
        if hashed is None:
            dummy = await asyncio.wrap_future(self._dummy_hash)
            await self._run(bcrypt.checkpw, password, dummy)
            return False
        try:
            return await self._run(bcrypt.checkpw, password, hashed.encode("ascii"))
        except ValueError:  # a stored value that is not a bcrypt hash never matches
            return False

    async def close(self) -> None:
        """Stop the pool; a hash already running finishes in its thread, queued ones are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)
