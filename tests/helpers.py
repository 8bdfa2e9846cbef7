"""Small test helpers: wait on conditions, never on fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout_s: float = 15.0,
    interval_s: float = 0.02,
    message: str = "condition",
) -> T:
    """Call probe until it returns a truthy value (returned) or the timeout passes (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout_s}s (last value: {last!r})")
        await asyncio.sleep(interval_s)


def wait_until(probe: Callable[[], T], *, timeout_s: float = 15.0, interval_s: float = 0.02, message: str = "") -> T:
    """Synchronous twin of eventually()."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message or 'condition'} not met within {timeout_s}s (last value: {last!r})")
        time.sleep(interval_s)
