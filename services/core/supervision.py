"""Background loops that cannot die unseen: a loop that ends (crashed, or cancelled by anyone but the stop)
makes its process NOT_SERVING at once and is started again after a backoff with jitter.

The loops are meant to run for the life of the process: a sweeper that stopped would leave held tasks
unreleased, a relay that stopped would leave watchers without events, while the process still answered
calls and Envoy kept routing to it. Health is what tells Envoy, the launcher and compose.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from services.core.cancellation import cancel_and_wait

log = logging.getLogger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts of a loop that ended: doubling from first_s up to max_s, with ±jitter."""

    first_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.2
    # A loop that ran this long before ending starts the backoff again from first_s.
    reset_after_s: float = 60.0

    def delay_s(self, failures: int) -> float:
        base = min(self.max_s, self.first_s * 2 ** max(0, failures - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass
class _Loop:
    factory: LoopFactory
    task: asyncio.Task[None] | None = None
    failures: int = 0
    started_at: float = 0.0


@dataclass
class LoopSupervisor:
    """Runs the loops, restarts the ones that end, and says whether all are running."""

    factories: list[LoopFactory]
    # Called at once whenever a loop ends or is back (the process re-checks its health then).
    on_change: Callable[[], Awaitable[None]]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _loops: list[_Loop] = field(default_factory=list)
    _restarts: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: bool = False

    def start(self) -> None:
        self._loops = [_Loop(factory) for factory in self.factories]
        for loop in self._loops:
            self._run(loop)

    def running(self) -> bool:
        """True while every loop runs (the readiness probe of the process)."""
        return all(loop.task is not None and not loop.task.done() for loop in self._loops)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The loops' current tasks (for tests that kill one)."""
        return [loop.task for loop in self._loops if loop.task is not None]

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait([*self._restarts, *self.tasks()])

    def _run(self, loop: _Loop) -> None:
        event_loop = asyncio.get_running_loop()
        loop.started_at = event_loop.time()
        loop.task = asyncio.create_task(loop.factory(), name=getattr(loop.factory, "__qualname__", "loop"))
        loop.task.add_done_callback(lambda task: self._ended(loop, task))

    def _ended(self, loop: _Loop, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        name = task.get_name()
        if task.cancelled():
            log.error("background loop was cancelled", extra={"loop": name})
        elif (exc := task.exception()) is not None:
            log.error("background loop crashed", extra={"loop": name}, exc_info=exc)
        else:
            log.error("background loop returned", extra={"loop": name})
        ran_s = asyncio.get_running_loop().time() - loop.started_at
        loop.failures = 1 if ran_s >= self.policy.reset_after_s else loop.failures + 1
        restart = asyncio.create_task(self._restart(loop, self.policy.delay_s(loop.failures)))
        self._restarts.add(restart)
        restart.add_done_callback(self._restarts.discard)

    async def _restart(self, loop: _Loop, delay_s: float) -> None:
        await self.on_change()  # NOT_SERVING now, not at the next periodic check
        await asyncio.sleep(delay_s)
        if self._stopping:
            return
        log.info("restarting background loop", extra={"failures": loop.failures, "after_s": round(delay_s, 2)})
        self._run(loop)
        await self.on_change()
