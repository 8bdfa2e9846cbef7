"""Work kept off the path a reply waits on: run once what the current step made ready has run.

Writing a span or folding a metric is bookkeeping; the reply, the write or the handler start that the same step woke
is what someone waits for. asyncio runs a zero-delay timer at the next turn of the loop after the callbacks already
ready (the woken tasks' steps), so what is deferred here runs right after them, not before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def later(work: Callable[..., None], *args: Any) -> None:
    """Call work(*args) on the running event loop once the steps made ready so far have run; without a running
    loop, at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        work(*args)
        return
    loop.call_later(0, work, *args)
