"""arq: asyncio jobs, `max_jobs` per worker process, defaults otherwise (the worker polls every 0.5 s).

Worker: `arq bench.peers.arq.WorkerSettings` (one per worker process asked for), allow_abort_jobs=True.
Tuned for crash redelivery: job_timeout=25 s (the default is 300 s).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job

from bench.peers.base import CONCURRENCY_ENV, PEER_URL_ENV, TUNED_ENV, Peer, WorkerPlan, venv_script
from bench.stamps import AsyncStamps

SYSTEM = "arq"
READY_KEY = "bench:arq:ready"
IN_FLIGHT = 50
RESULT_POLL_S = 0.01
TUNED_JOB_TIMEOUT_S = 25
T = TypeVar("T")

_url = os.environ.get(PEER_URL_ENV, "redis://127.0.0.1:6379/3")
_stamps = AsyncStamps()


async def noop(ctx: dict[str, Any], label: str) -> None:
    await _stamps.incr(SYSTEM, label)


async def stamp(ctx: dict[str, Any], label: str) -> None:
    await _stamps.start(SYSTEM, label)


async def sleep(ctx: dict[str, Any], label: str, seconds: float) -> None:
    await _stamps.start(SYSTEM, label)
    try:
        await asyncio.sleep(seconds)
    finally:
        stopped = time.time()
        await asyncio.shield(_stamps.stop(SYSTEM, label, stopped))


async def _announce(ctx: dict[str, Any]) -> None:
    await ctx["redis"].sadd(READY_KEY, os.getpid())


class WorkerSettings:
    functions = [noop, stamp, sleep]
    redis_settings = RedisSettings.from_dsn(_url)
    max_jobs = int(os.environ.get(CONCURRENCY_ENV) or 10)
    allow_abort_jobs = True
    job_timeout = TUNED_JOB_TIMEOUT_S if os.environ.get(TUNED_ENV) else 300
    on_startup = _announce


class ArqPeer(Peer):
    name = SYSTEM
    enqueue_method = "enqueue_job() x asyncio.gather, 50 in flight (no bulk API)"
    result_api = (
        "Job.result_info() polled every 10 ms (arq 0.25's Job.result() refuses to wait while the job runs); "
        "the worker itself polls every 0.5 s (default)"
    )
    cancel_method = "Job.abort() with allow_abort_jobs=True (the asyncio task is cancelled at the worker's next poll)"
    settings = "defaults (poll_delay 0.5 s), max_jobs = concurrency, allow_abort_jobs=True; tuned: job_timeout=25 s"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.loop = asyncio.new_event_loop()
        self.pool: ArqRedis = self.run(create_pool(RedisSettings.from_dsn(url)))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def worker_argvs(self, plan: WorkerPlan) -> list[list[str]]:
        return [[venv_script("arq"), "bench.peers.arq.WorkerSettings"] for _ in range(plan.processes)]

    def ready_workers(self) -> int:
        return int(redis.Redis.from_url(self.url).scard(READY_KEY))

    def enqueue_noops(self, label: str, n: int) -> None:
        async def enqueue_all() -> None:
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def one() -> None:
                async with gate:
                    await self.pool.enqueue_job("noop", label)

            await asyncio.gather(*(one() for _ in range(n)))

        self.run(enqueue_all())

    def submit(self, kind: str, label: str, seconds: float = 0.0, tuned: bool = False, step_s: float = 0.0) -> Job:
        args: tuple[Any, ...] = (label, seconds) if kind == "sleep" else (label,)
        job = self.run(self.pool.enqueue_job(kind, *args))
        assert job is not None
        return job

    def wait_result(self, handle: Job, timeout_s: float) -> None:
        self.run(self._result(handle, timeout_s))

    async def _result(self, handle: Job, timeout_s: float) -> None:
        """Job.result(poll_delay=0.01), less its refusal to wait while the job runs (arq 0.25 raises then)."""
        deadline = time.monotonic() + timeout_s
        while await handle.result_info() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for {handle.job_id} within {timeout_s}s")
            await asyncio.sleep(RESULT_POLL_S)

    def cancel(self, handle: Job) -> None:
        self.run(handle.abort(timeout=30, poll_delay=RESULT_POLL_S))

    def wait_cancelled(self, handle: Job, timeout_s: float) -> None:
        """abort() returns once the job is aborted: the status is already visible."""

    def close(self) -> None:
        self.run(self.pool.aclose())
        self.loop.close()


PEER = ArqPeer
