"""RQ: one job at a time per worker, each job in a forked work horse (RQ's design).

Workers: `rq worker` (one per worker process asked for); the parallel-sleep scenario uses one
`rq worker-pool -n 100`. Tuned for crash redelivery: Retry(max=1) on the job; maintenance, job monitoring and
the idle dequeue timeout every 5 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue, Retry, Worker
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus

from bench.peers.base import Peer, WorkerPlan, venv_script
from bench.stamps import SyncStamps, sleep_in_steps

SYSTEM = "rq"
QUEUE = "bench"
BATCH = 1000
TUNED_MAINTENANCE_S = 5
STATUS_POLL_S = 0.0005
_stamps = SyncStamps()


def noop(label: str) -> None:
    _stamps.incr(SYSTEM, label)


def stamp(label: str) -> None:
    _stamps.start(SYSTEM, label)


def sleep(label: str, seconds: float, step_s: float = 0.0) -> None:
    _stamps.start(SYSTEM, label)
    try:
        sleep_in_steps(seconds, step_s)
    finally:
        _stamps.stop(SYSTEM, label, time.time())


_FUNCTIONS: dict[str, Callable[..., None]] = {"noop": noop, "stamp": stamp, "sleep": sleep}


class RQPeer(Peer):
    name = SYSTEM
    enqueue_method = "enqueue_many(), batches of 1000"
    result_api = "Job.latest_result(timeout=…) (blocking read of the job's result stream)"
    cancel_method = "send_stop_job_command() (the worker kills the work horse); status STOPPED polled every 0.5 ms"
    settings = (
        "default Worker (fork per job), one job at a time per worker; "
        "tuned: Retry(max=1), --maintenance-interval 5 --job-monitoring-interval 5 --worker-ttl 20"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.redis = redis.Redis.from_url(url)
        self.queue = Queue(QUEUE, connection=self.redis)

    def worker_argvs(self, plan: WorkerPlan) -> list[list[str]]:
        if plan.pool:
            horses = str(plan.processes * plan.concurrency)
            return [[venv_script("rq"), "worker-pool", "-n", horses, "-u", self.url, QUEUE]]
        # A dead worker's job is abandoned once its heartbeat lapses (monitoring interval + 60 s) and found by
        # the next maintenance pass, which an idle worker only reaches when its blocking dequeue (worker TTL
        # - 15 s, 405 s by default) returns; tuned: heartbeats, dequeue timeouts and maintenance every 5 s.
        interval = (
            [
                "--maintenance-interval",
                str(TUNED_MAINTENANCE_S),
                "--job-monitoring-interval",
                str(TUNED_MAINTENANCE_S),
                "--worker-ttl",
                str(TUNED_MAINTENANCE_S + 15),
            ]
            if plan.tuned
            else []
        )
        return [
            # No -n: RQ names each worker uniquely, so a replacement node is not refused as a duplicate.
            [venv_script("rq"), "worker", "-u", self.url, "-q", *interval, QUEUE]
            for _ in range(plan.processes)
        ]

    def ready_workers(self) -> int:
        return int(Worker.count(connection=self.redis, queue=self.queue))

    def enqueue_noops(self, label: str, n: int) -> None:
        for first in range(0, n, BATCH):
            size = min(BATCH, n - first)
            self.queue.enqueue_many([Queue.prepare_data(noop, (label,)) for _ in range(size)])

    def submit(self, kind: str, label: str, seconds: float = 0.0, tuned: bool = False, step_s: float = 0.0) -> Job:
        args: tuple[Any, ...] = (label, seconds, step_s) if kind == "sleep" else (label,)
        retry = Retry(max=1) if tuned else None
        return self.queue.enqueue(_FUNCTIONS[kind], *args, retry=retry)

    def wait_result(self, handle: Job, timeout_s: float) -> None:
        if handle.latest_result(timeout=max(1, round(timeout_s))) is None:
            raise TimeoutError(f"no result for {handle.id} within {timeout_s}s")

    def cancel(self, handle: Job) -> None:
        send_stop_job_command(self.redis, handle.id)

    def wait_cancelled(self, handle: Job, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while handle.get_status(refresh=True) != JobStatus.STOPPED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {handle.id} not STOPPED within {timeout_s}s")
            time.sleep(STATUS_POLL_S)

    def close(self) -> None:
        self.redis.close()


PEER = RQPeer
