"""The asyncio side of the few things the two clients do differently; _io_sync.py is the blocking side.

aio.py uses only these names for waiting, events, channels and call errors, so that the blocking client can
be generated from it by unasync (which drops `async` and `await`): this module's name becomes _io_sync there.
Both modules offer the same names with the same meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from resilienttask._channel import ChannelSettings, Stubs

# Each of these names is defined in _io_sync.py too, with the same meaning for the blocking client.
__all__ = [
    "Cancelled",
    "Event",
    "RpcError",
    "close_channel",
    "close_generator",
    "first_stubs",
    "gather",
    "open_stubs",
    "sleep",
    "wait_set",
]

T = TypeVar("T")

# A failed call, as the channel raises it.
RpcError = grpc.aio.AioRpcError
# How a call cancelled under an iterating task surfaces in it.
Cancelled = asyncio.CancelledError
# Set by close() from any task; waited on between reconnects.
Event = asyncio.Event


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until the event is set or timeout_s passed; True when it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
    return event.is_set()


def first_stubs(settings: ChannelSettings) -> Stubs | None:
    """None: an asyncio channel belongs to the event loop that uses it, so it is opened on the first call."""
    return None


def open_stubs(settings: ChannelSettings) -> Stubs:
    return Stubs.over(settings.async_channel())


async def close_channel(channel: grpc.aio.Channel) -> None:
    await channel.close(None)


async def close_generator(generator: AsyncGenerator[Any, None]) -> None:
    """Finish a generator, unless it is running (another task iterates it: close() ends that iteration)."""
    if not getattr(generator, "ag_running", False):
        await generator.aclose()


async def gather(calls: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """The calls' results in order, at most `limit` of them in flight at once."""
    gate = asyncio.Semaphore(limit)

    async def gated(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(gated(call) for call in calls)))
