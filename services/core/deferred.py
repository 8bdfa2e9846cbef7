"""Work kept off the path a reply waits on: run on the event loop's next turn, after what the current step woke.

Writing a span is bookkeeping; the reply, the write or the handler start that the same step woke is what someone
waits for. A callback the current step hands to call_soon runs at the loop's next turn, in the order handed: after
the steps of the tasks this step woke before it (an event set, a future resolved), and after the call's own
response when a gRPC handler returns (grpc.aio sends it in the same step). Deferred work costs a handle (about a
microsecond), not a timer: a zero-delay timer costs several times that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def later(work: Callable[..., None], *args: Any) -> None:
    """Call work(*args) at the running event loop's next turn, after the steps woken so far; without a running
    loop, at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        work(*args)
        return
    loop.call_soon(work, *args)
