"""The blocking side of the few things the two clients do differently; _io_async.py is the asyncio side.

client.py (generated from aio.py by unasync) uses these names where aio.py uses _io_async's: every name in
_io_async.__all__ is defined here too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

import grpc

from resilienttask._channel import ChannelSettings, Stubs

T = TypeVar("T")

# A failed call, as the channel raises it (the error is also the call: grpc.Call).
RpcError = grpc.RpcError
# A blocking stream cancelled by close() ends with an RpcError (CANCELLED); this is raised only by futures.
Cancelled = grpc.FutureCancelledError
# Set by close() from any thread; waited on between reconnects.
Event = threading.Event


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def wait_set(event: threading.Event, timeout_s: float) -> bool:
    """Wait until the event is set or timeout_s passed; True when it was set."""
    return event.wait(timeout_s)


def first_stubs(settings: ChannelSettings) -> Stubs | None:
    """A blocking channel is opened at once (it connects on the first call), so threads share one from the start."""
    return open_stubs(settings)


def open_stubs(settings: ChannelSettings) -> Stubs:
    return Stubs.over(settings.sync_channel())


def close_channel(channel: grpc.Channel) -> None:
    channel.close()


def close_generator(generator: Generator[Any, None, None]) -> None:
    generator.close()


def gather(calls: Iterable[Callable[[], T]], limit: int) -> list[T]:
    """The calls' results in order, one after the other (`limit` matters to the asyncio side only)."""
    return [call() for call in calls]
