"""Progress goes up the Connect stream throttled: at most one report per task per interval, never the last one lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from resilienttask.worker.v1 import worker_pb2
from services.worker.messages import HeldKey, held

DEFAULT_INTERVAL_S = 0.1


class ProgressThrottle:
    """Keeps the latest value per attempt; a sender loop ships what accumulated, then rests one interval."""

    def __init__(
        self,
        send: Callable[[worker_pb2.ConnectRequest], Awaitable[bool]],
        is_running: Callable[[HeldKey], bool],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._send = send
        self._is_running = is_running
        self.interval_s = interval_s
        self._latest: dict[HeldKey, float] = {}
        self._wake = asyncio.Event()

    def report(self, key: HeldKey, fraction: float) -> None:
        """Called by handlers (often in tight loops): just remember the value."""
        self._latest[key] = fraction
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            latest, self._latest = self._latest, {}
            for key, fraction in latest.items():
                # A finished attempt's outcome supersedes its progress; a dropped report (stream down) is
                # harmless because handlers keep reporting.
                if self._is_running(key):
                    await self._send(
                        worker_pb2.ConnectRequest(progress=worker_pb2.ProgressReport(task=held(key), progress=fraction))
                    )
            await asyncio.sleep(self.interval_s)
