"""Procrastinate: the durable peer, its jobs in PostgreSQL (its own database on the bench's PostgreSQL).

Worker: `procrastinate --app bench.peers.procrastinate.app --log-level warning worker --concurrency N` (one
per worker process asked for): asyncio bodies, psycopg 3 (`PsycopgConnector`) with a pool sized to the
concurrency, and the worker woken by LISTEN/NOTIFY (`listen_notify`, the default) rather than by its 5 s
fetch poll. Procrastinate stores no return values, so the client polls the job's status. Tuned for crash
redelivery: the documented stalled-jobs recipe (a periodic task that retries the jobs of workers whose
heartbeat is stale), run every second, heartbeats every 2 s, a worker stalled after 10 s; without it a
killed worker's job stays `doing` for ever.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg
from procrastinate import App, PsycopgConnector
from procrastinate.jobs import Status
from procrastinate.tasks import Task
from procrastinate.types import JSONDict
from psycopg import sql

from bench.peers.base import CONCURRENCY_ENV, PEER_URL_ENV, TUNED_ENV, Peer, WorkerPlan, venv_script
from bench.stamps import AsyncStamps

SYSTEM = "procrastinate"
BATCH = 1000
# The client's view of a job: its row's status, polled (Procrastinate has no result or completion notification).
STATUS_POLL_S = 0.005
TUNED_HEARTBEAT_S = 2.0
TUNED_STALLED_AFTER_S = 10.0
# Pool connections a worker needs beside its job slots: job fetches, heartbeats, the periodic deferrer and the
# abort poll (its LISTEN connection is a separate one).
POOL_SPARE = 3
T = TypeVar("T")

_url = os.environ[PEER_URL_ENV]  # set by the harness (bench/run.py) and given to the workers
_tuned = bool(os.environ.get(TUNED_ENV))
_concurrency = int(os.environ.get(CONCURRENCY_ENV) or 10)
_stamps = AsyncStamps()

app = App(
    connector=PsycopgConnector(conninfo=_url, min_size=1, max_size=_concurrency + POOL_SPARE),
    worker_defaults={"update_heartbeat_interval": TUNED_HEARTBEAT_S} if _tuned else {},
)


@app.task(name="noop")
async def noop(label: str) -> None:
    await _stamps.incr(SYSTEM, label)


@app.task(name="stamp")
async def stamp(label: str) -> None:
    await _stamps.start(SYSTEM, label)


@app.task(name="sleep")
async def sleep(label: str, seconds: float) -> None:
    await _stamps.start(SYSTEM, label)
    try:
        await asyncio.sleep(seconds)
    finally:
        stopped = time.time()
        await asyncio.shield(_stamps.stop(SYSTEM, label, stopped))


if _tuned:

    @app.periodic(cron="* * * * * *")
    @app.task(name="retry_stalled_jobs", queueing_lock="retry_stalled_jobs")
    async def retry_stalled_jobs(timestamp: int) -> None:
        """The stalled-jobs recipe: a job whose worker stopped beating is put back in its queue."""
        for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=TUNED_STALLED_AFTER_S):
            await app.job_manager.retry_job(job)


_TASKS: dict[str, Task[..., Any, ...]] = {"noop": noop, "stamp": stamp, "sleep": sleep}


def _ensure_database(url: str) -> None:
    """Create the peer's database on the bench's PostgreSQL (a fresh data directory each run)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = str(info["dbname"])
    with psycopg.connect(psycopg.conninfo.make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class ProcrastinatePeer(Peer):
    name = SYSTEM
    enqueue_method = "batch_defer_async(), batches of 1000"
    result_api = "none (Procrastinate stores no return values): the job's status polled every 5 ms"
    cancel_method = (
        "job_manager.cancel_job_by_id_async(abort=True) (NOTIFY; the worker cancels the asyncio task); "
        "status ABORTED polled every 5 ms"
    )
    settings = (
        "PostgreSQL (own database), PsycopgConnector pool of concurrency + 3, listen_notify (default), "
        "concurrency = slots, async bodies; tuned: stalled-jobs recipe every second, heartbeat 2 s, "
        "stalled after 10 s"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        _ensure_database(url)
        self.loop = asyncio.new_event_loop()
        self.run(self._open())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> None:
        """Open the client's pool and apply Procrastinate's schema to its new database."""
        await app.open_async()
        row = await app.connector.execute_query_one_async("SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS ok")
        if not row["ok"]:
            await app.schema_manager.apply_schema_async()

    def worker_argvs(self, plan: WorkerPlan) -> list[list[str]]:
        return [
            [
                venv_script("procrastinate"),
                "--app",
                "bench.peers.procrastinate.app",
                "--log-level",
                "warning",
                "worker",
                "--concurrency",
                str(plan.concurrency),
                "--name",
                f"bench{i}",
            ]
            for i in range(1, plan.processes + 1)
        ]

    def ready_workers(self) -> int:
        """Workers whose LISTEN connection is open: registered but not yet listening would miss a NOTIFY."""
        row = self.run(
            app.connector.execute_query_one_async(
                "SELECT count(*) AS n FROM pg_stat_activity "
                "WHERE datname = current_database() AND starts_with(query, 'LISTEN ')"
            )
        )
        return int(row["n"])

    def reset(self) -> None:
        self.run(
            app.connector.execute_query_async(
                "TRUNCATE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs, "
                "procrastinate_workers RESTART IDENTITY CASCADE"
            )
        )

    def enqueue_noops(self, label: str, n: int) -> None:
        for first in range(0, n, BATCH):
            batch: list[JSONDict] = [{"label": label} for _ in range(min(BATCH, n - first))]
            self.run(noop.batch_defer_async(*batch))

    def submit(self, kind: str, label: str, seconds: float = 0.0, tuned: bool = False, step_s: float = 0.0) -> int:
        kwargs: dict[str, Any] = {"label": label, "seconds": seconds} if kind == "sleep" else {"label": label}
        return self.run(_TASKS[kind].defer_async(**kwargs))

    def _wait_status(self, job_id: int, wanted: Status, timeout_s: float) -> None:
        async def wait() -> None:
            deadline = time.monotonic() + timeout_s
            while (status := await app.job_manager.get_job_status_async(job_id)) != wanted:
                if status in (Status.FAILED, Status.CANCELLED, Status.ABORTED, Status.SUCCEEDED):
                    raise RuntimeError(f"job {job_id} ended {status.value}, not {wanted.value}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not {wanted.value} within {timeout_s}s")
                await asyncio.sleep(STATUS_POLL_S)

        self.run(wait())

    def wait_result(self, handle: int, timeout_s: float) -> None:
        self._wait_status(handle, Status.SUCCEEDED, timeout_s)

    def cancel(self, handle: int) -> None:
        if not self.run(app.job_manager.cancel_job_by_id_async(handle, abort=True)):
            raise RuntimeError(f"job {handle} was neither waiting nor running")

    def wait_cancelled(self, handle: int, timeout_s: float) -> None:
        self._wait_status(handle, Status.ABORTED, timeout_s)

    def close(self) -> None:
        self.run(app.close_async())
        self.loop.close()


PEER = ProcrastinatePeer
