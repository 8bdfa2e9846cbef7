"""What every task body writes to Redis, for every system alike: a counter, start and stop timestamps.

Bodies run in worker processes; they find the stamp database through BENCH_STAMPS_URL. Timestamps are
wall-clock seconds (time.time()), comparable across the processes of this one machine. Starts are a list per
label (a task that runs twice leaves two); each carries the pid of the process that ran the body.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

STAMPS_URL_ENV = "BENCH_STAMPS_URL"


def count_key(system: str, label: str) -> str:
    return f"bench:{system}:count:{label}"


def start_key(system: str, label: str) -> str:
    return f"bench:{system}:start:{label}"


def stop_key(system: str, label: str) -> str:
    return f"bench:{system}:stop:{label}"


def _stamp() -> str:
    return f"{time.time():.6f} {os.getpid()}"


@dataclass(frozen=True)
class Start:
    at: float
    pid: int


def parse_start(raw: bytes | str) -> Start:
    text = raw.decode() if isinstance(raw, bytes) else raw
    at, pid = text.split()
    return Start(float(at), int(pid))


class SyncStamps:
    """Stamp writer for bodies that run in threads or processes (Celery, RQ, Dramatiq)."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        # A forked child (Celery prefork, RQ work horse) must not reuse its parent's socket.
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(self._url or os.environ[STAMPS_URL_ENV])
            self._pid = os.getpid()
        return self._client

    def incr(self, system: str, label: str) -> None:
        self.client.incr(count_key(system, label))

    def start(self, system: str, label: str) -> None:
        self.client.rpush(start_key(system, label), _stamp())

    def stop(self, system: str, label: str, at: float) -> None:
        self.client.set(stop_key(system, label), f"{at:.6f}")


class AsyncStamps:
    """Stamp writer for asyncio bodies (ours, arq)."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self._url or os.environ[STAMPS_URL_ENV])
        return self._client

    async def incr(self, system: str, label: str) -> None:
        await self.client.incr(count_key(system, label))

    async def start(self, system: str, label: str) -> None:
        await self.client.rpush(start_key(system, label), _stamp())

    async def stop(self, system: str, label: str, at: float) -> None:
        await self.client.set(stop_key(system, label), f"{at:.6f}")


def sleep_in_steps(seconds: float, step_s: float) -> None:
    """time.sleep in steps of step_s (0: one call): an exception raised in the thread (dramatiq-abort) lands
    only between steps, as a blocking C call cannot be interrupted."""
    if step_s <= 0:
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(step_s, left))


class StampReader:
    """The harness side: reads what the bodies wrote."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def count(self, system: str, label: str) -> int:
        return int(self.client.get(count_key(system, label)) or 0)

    def starts(self, system: str, label: str) -> list[Start]:
        return [parse_start(raw) for raw in self.client.lrange(start_key(system, label), 0, -1)]

    def stop(self, system: str, label: str) -> float | None:
        raw = self.client.get(stop_key(system, label))
        return float(raw) if raw is not None else None

    def wait_starts(self, system: str, label: str, n: int, timeout_s: float, poll_s: float = 0.002) -> list[Start]:
        """The first n starts of label, waiting up to timeout_s; fewer when they did not come."""
        deadline = time.monotonic() + timeout_s
        while True:
            starts = self.starts(system, label)
            if len(starts) >= n or time.monotonic() > deadline:
                return starts
            time.sleep(poll_s)
