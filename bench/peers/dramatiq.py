"""Dramatiq on the Redis broker, Redis results backend, dramatiq-abort for cancellation.

Worker: `dramatiq --processes 1 --threads N bench.peers.dramatiq` (one node per worker process asked for),
max_retries=0. Tuned for crash redelivery: heartbeat_timeout=10 s (the default is 60 s).
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
from dramatiq.results.errors import ResultFailure
from dramatiq_abort import Abortable, abort
from dramatiq_abort.backends import RedisBackend as AbortBackend

from bench.peers.base import PEER_URL_ENV, TUNED_ENV, Peer, WorkerPlan, venv_script
from bench.stamps import SyncStamps, sleep_in_steps

SYSTEM = "dramatiq"
QUEUE = "bench"
READY_KEY = "bench:dramatiq:ready"
TUNED_HEARTBEAT_TIMEOUT_MS = 10_000
RESULT_TTL_MS = 3_600_000

_url = os.environ.get(PEER_URL_ENV, "redis://127.0.0.1:6379/4")
_stamps = SyncStamps()


class _Announce(Middleware):
    """Tells the harness the worker is consuming."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        redis.Redis.from_url(_url).sadd(READY_KEY, os.getpid())


def _broker(url: str) -> RedisBroker:
    heartbeat = TUNED_HEARTBEAT_TIMEOUT_MS if os.environ.get(TUNED_ENV) else 60_000
    broker = RedisBroker(url=url, heartbeat_timeout=heartbeat)
    broker.add_middleware(Results(backend=RedisBackend(url=url), result_ttl=RESULT_TTL_MS))
    broker.add_middleware(Abortable(backend=AbortBackend(client=redis.Redis.from_url(url))))
    broker.add_middleware(_Announce())
    return broker


broker = _broker(_url)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, actor_name="noop")
def noop(label: str) -> None:
    _stamps.incr(SYSTEM, label)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True, actor_name="stamp")
def stamp(label: str) -> None:
    _stamps.start(SYSTEM, label)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True, actor_name="sleep", time_limit=600_000)
def sleep(label: str, seconds: float, step_s: float = 0.0) -> None:
    _stamps.start(SYSTEM, label)
    try:
        sleep_in_steps(seconds, step_s)
    finally:
        _stamps.stop(SYSTEM, label, time.time())


_ACTORS: dict[str, dramatiq.Actor[..., None]] = {"noop": noop, "stamp": stamp, "sleep": sleep}


class DramatiqPeer(Peer):
    name = SYSTEM
    enqueue_method = "actor.send() loop (no bulk API)"
    result_api = "Message.get_result(block=True) (Redis backend, blocking pop)"
    cancel_method = "dramatiq-abort: abort(message_id) (an exception raised in the worker thread)"
    settings = (
        "Redis broker, Results (Redis) and Abortable middleware, threads = concurrency, max_retries=0; "
        "tuned: heartbeat_timeout=10 s"
    )

    def worker_argvs(self, plan: WorkerPlan) -> list[list[str]]:
        return [
            [venv_script("dramatiq"), "--processes", "1", "--threads", str(plan.concurrency), "bench.peers.dramatiq"]
            for _ in range(plan.processes)
        ]

    def ready_workers(self) -> int:
        return int(redis.Redis.from_url(self.url).scard(READY_KEY))

    def enqueue_noops(self, label: str, n: int) -> None:
        for _ in range(n):
            noop.send(label)

    def submit(
        self, kind: str, label: str, seconds: float = 0.0, tuned: bool = False, step_s: float = 0.0
    ) -> dramatiq.Message:
        args: tuple[Any, ...] = (label, seconds, step_s) if kind == "sleep" else (label,)
        return _ACTORS[kind].send(*args)

    def wait_result(self, handle: dramatiq.Message, timeout_s: float) -> None:
        handle.get_result(block=True, timeout=int(timeout_s * 1000))

    def cancel(self, handle: dramatiq.Message) -> None:
        abort(handle.message_id)

    def wait_cancelled(self, handle: dramatiq.Message, timeout_s: float) -> None:
        try:
            handle.get_result(block=True, timeout=int(timeout_s * 1000))
        except ResultFailure:
            return
        raise RuntimeError("the aborted message finished normally")

    def close(self) -> None:
        broker.close()


PEER = DramatiqPeer
