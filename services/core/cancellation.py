"""Stopping asyncio tasks for sure: a cancellation can be swallowed inside a library call (seen with
redis-py 8 on Python 3.11, which sends commands under asyncio.wait_for), so one cancel() proves nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], give_up_s: float = 5.0) -> None:
    """Cancel the tasks again and again until they end, or log the ones still running after give_up_s."""
    deadline = time.monotonic() + give_up_s
    pending = {t for t in tasks if not t.done()}
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    if pending:
        log.error("loops ignored cancellation", extra={"loops": ",".join(t.get_name() for t in pending)})
