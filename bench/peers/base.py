"""What each peer module provides to the scenario driver: its worker command lines and its client calls."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Environment the peer modules read when imported (in worker processes and in the harness); the URL is the
# peer's Redis database, or its PostgreSQL database for Procrastinate.
PEER_URL_ENV = "BENCH_PEER_REDIS_URL"
CONCURRENCY_ENV = "BENCH_CONCURRENCY"
TUNED_ENV = "BENCH_TUNED"
LONG_TASKS_ENV = "BENCH_LONG_TASKS"


def venv_script(name: str) -> str:
    """A console script installed next to the running interpreter (celery, rq, arq, dramatiq)."""
    return str(Path(sys.executable).parent / name)


@dataclass(frozen=True)
class WorkerPlan:
    """How a peer's workers run for one scenario: separate worker processes, each with its concurrency."""

    processes: int
    concurrency: int
    # Crash scenario: the smallest documented change that makes a killed worker's task run again.
    tuned: bool = False
    # Long tasks: apply the peer's documented advice for them (Celery: prefetch multiplier 1).
    long_tasks: bool = False
    # Parallel sleep on RQ: one `rq worker-pool` of this many work horses instead of separate workers.
    pool: bool = False


class Peer(ABC):
    """One peer system: settings, enqueue calls, result and cancel APIs, in its own words."""

    name: str
    enqueue_method: str
    result_api: str
    cancel_method: str
    settings: str

    def __init__(self, url: str) -> None:
        self.url = url

    @abstractmethod
    def worker_argvs(self, plan: WorkerPlan) -> list[list[str]]:
        """One command line per worker node (each killed on its own in the crash scenario)."""

    def worker_env(self, plan: WorkerPlan) -> dict[str, str]:
        return {
            PEER_URL_ENV: self.url,
            CONCURRENCY_ENV: str(plan.concurrency),
            TUNED_ENV: "1" if plan.tuned else "",
            LONG_TASKS_ENV: "1" if plan.long_tasks else "",
        }

    @abstractmethod
    def ready_workers(self) -> int:
        """How many worker nodes are up and consuming."""

    def reset(self) -> None:
        """Forget every queue, result and registered worker (the peer has its own Redis database)."""
        import redis

        redis.Redis.from_url(self.url).flushdb()

    @abstractmethod
    def enqueue_noops(self, label: str, n: int) -> None:
        """Enqueue n no-op tasks as fast as the peer's own API allows."""

    @abstractmethod
    def submit(self, kind: str, label: str, seconds: float = 0.0, tuned: bool = False, step_s: float = 0.0) -> Any:
        """Enqueue one task (`noop`, `stamp` or `sleep`); returns the peer's handle to it.

        Thread and process bodies sleep in steps of step_s (0: one call); asyncio bodies await one sleep.
        """

    @abstractmethod
    def wait_result(self, handle: Any, timeout_s: float) -> None:
        """Block until the client sees the task finished, through the peer's result API."""

    @abstractmethod
    def cancel(self, handle: Any) -> None:
        """Ask the peer to stop the running task (returns when the peer's cancel call returns)."""

    @abstractmethod
    def wait_cancelled(self, handle: Any, timeout_s: float) -> None:
        """Block until the client sees the task stopped."""

    @abstractmethod
    def close(self) -> None:
        """Release client connections."""
