"""Celery 5 on the Redis broker with a Redis result backend, acks_late, prefork pool.

Worker: `celery -A bench.peers.celery worker --pool=prefork -c N` (one node per worker process asked for),
without gossip, mingle and heartbeats (they only slow start-up). Tuned for crash redelivery:
broker visibility_timeout 10 s (the default is one hour), checked every second (kombu's default scan period is
100 s).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult
from celery.signals import worker_ready

from bench.peers.base import LONG_TASKS_ENV, PEER_URL_ENV, TUNED_ENV, Peer, WorkerPlan, venv_script
from bench.stamps import SyncStamps, sleep_in_steps

SYSTEM = "celery"
QUEUE = "bench"
READY_KEY = "bench:celery:ready"
TUNED_VISIBILITY_TIMEOUT_S = 10

_url = os.environ.get(PEER_URL_ENV, "redis://127.0.0.1:6379/1")
app = Celery("bench", broker=_url, backend=_url)
app.conf.update(
    task_acks_late=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
)
if os.environ.get(LONG_TASKS_ENV):  # Celery's advice for long tasks: reserve one task per pool process
    app.conf.worker_prefetch_multiplier = 1
if os.environ.get(TUNED_ENV):
    # kombu 5.7 scans for expired unacked messages every interval x throttle (10 x 10 s by default).
    app.conf.broker_transport_options = {
        "visibility_timeout": TUNED_VISIBILITY_TIMEOUT_S,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
_stamps = SyncStamps()


@worker_ready.connect
def _announce(**_: Any) -> None:
    redis.Redis.from_url(_url).sadd(READY_KEY, os.getpid())


@app.task(name="bench.noop")
def noop(label: str) -> None:
    _stamps.incr(SYSTEM, label)


@app.task(name="bench.stamp")
def stamp(label: str) -> None:
    _stamps.start(SYSTEM, label)


@app.task(name="bench.sleep")
def sleep(label: str, seconds: float, step_s: float = 0.0) -> None:
    _stamps.start(SYSTEM, label)
    try:
        sleep_in_steps(seconds, step_s)
    finally:
        _stamps.stop(SYSTEM, label, time.time())


class CeleryPeer(Peer):
    name = SYSTEM
    enqueue_method = "delay() loop (no bulk API)"
    result_api = "AsyncResult.get() (Redis backend, pub/sub notification)"
    cancel_method = "AsyncResult.revoke(terminate=True) [SIGTERM to the pool process]"
    settings = (
        "Redis broker and result backend, task_acks_late=True, prefork pool, "
        "prefetch multiplier 4 (default; 1 for the 1 s sleeps), --without-gossip --without-mingle --without-heartbeat; "
        "tuned: visibility_timeout=10 s, unacked_restore_interval=1 s, unacked_restore_throttle=1"
    )

    def worker_argvs(self, plan: WorkerPlan) -> list[list[str]]:
        return [
            [
                venv_script("celery"),
                "-A",
                "bench.peers.celery",
                "worker",
                "--pool=prefork",
                f"--concurrency={plan.concurrency}",
                f"--hostname=bench{i}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=WARNING",
                f"--queues={QUEUE}",
            ]
            for i in range(1, plan.processes + 1)
        ]

    def ready_workers(self) -> int:
        return int(redis.Redis.from_url(self.url).scard(READY_KEY))

    def enqueue_noops(self, label: str, n: int) -> None:
        for _ in range(n):
            noop.delay(label)

    def submit(
        self, kind: str, label: str, seconds: float = 0.0, tuned: bool = False, step_s: float = 0.0
    ) -> AsyncResult:
        if kind == "noop":
            return noop.delay(label)
        if kind == "stamp":
            return stamp.delay(label)
        return sleep.delay(label, seconds, step_s)

    def wait_result(self, handle: AsyncResult, timeout_s: float) -> None:
        handle.get(timeout=timeout_s)

    def cancel(self, handle: AsyncResult) -> None:
        handle.revoke(terminate=True)

    def wait_cancelled(self, handle: AsyncResult, timeout_s: float) -> None:
        try:
            handle.get(timeout=timeout_s)
        except TaskRevokedError:
            return
        raise RuntimeError("the revoked task finished normally")

    def close(self) -> None:
        app.close()


PEER = CeleryPeer
