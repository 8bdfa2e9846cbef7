"""Register task handlers that `rtask-worker` runs: `@task("name")` on an async or sync function.

    from resilienttask.handlers import TaskContext, task

    @task("resize")
    async def resize(ctx: TaskContext) -> dict:
        for i in range(10):
            ctx.log.info("step %d of 10", i + 1)
            await ctx.sleep_or_cancel(0.1)
            ctx.report_progress((i + 1) / 10)
        return {"done": True}

Point the worker at the module with `RTASK_WORKER_IMPORTS=my_package.tasks`.

How handlers run and stop:
- async handlers run as asyncio tasks inside the worker. A cancel (or max_runtime) cancels the
  task, so they stop at their next `await`. An async handler cannot be killed: one that keeps
  running after the grace period (it swallowed the cancellation or blocks the loop) is reported
  as abandoned, cancelled again periodically, and no longer holds a slot. Register handlers that
  may ignore cancellation with `process=True`.
- sync handlers always run in a fresh child interpreter (as do async ones with `process=True`).
  A cancel sets `ctx.cancelled` (and cancels the asyncio task of an async handler); if the
  child has not stopped after the grace period it is killed with SIGKILL, together with any
  processes it started.
This module has no dependencies outside the standard library, so handler code imports it freely.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Handler", "TaskContext", "get_handler", "registered_kinds", "task"]

_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

HandlerFn = Callable[["TaskContext"], Any]
F = TypeVar("F", bound=HandlerFn)


@dataclass
class TaskContext:
    """What a handler gets: the task's arguments, its progress sink and its cancel signal."""

    task_id: str
    attempt: int
    payload: dict[str, Any]
    workload_s: float
    _progress_sink: Callable[[float], None] = field(repr=False, default=lambda _fraction: None)
    _cancel: threading.Event = field(repr=False, default_factory=threading.Event)
    # Receives (level name, text) of every record of `log`; the worker stores them as the task's log.
    _log_sink: Callable[[str, str], None] = field(repr=False, default=lambda _level, _text: None)
    _logger: logging.Logger | None = field(repr=False, default=None, init=False)

    @property
    def log(self) -> logging.Logger:
        """A standard logger whose records become this attempt's log lines (`rtask logs TASK`).

        It is the task's own (not in the logging tree): records go to the task's log only, at every level
        from DEBUG up; `exc_info` adds the traceback to the line. Lines beyond the worker's rate bounds are
        counted as dropped, never waited for.
        """
        if self._logger is None:
            logger = logging.Logger("resilienttask.task", logging.DEBUG)
            logger.propagate = False
            logger.addHandler(_SinkHandler(self._log_sink))
            self._logger = logger
        return self._logger

    def report_progress(self, fraction: float) -> None:
        """Report progress from 0.0 to 1.0 (clamped); cheap enough to call in a tight loop."""
        self._progress_sink(min(1.0, max(0.0, float(fraction))))

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled or ran past its max_runtime; the handler should stop."""
        return self._cancel.is_set()

    def wait_cancelled(self, timeout_s: float) -> bool:
        """Block a sync handler for up to timeout_s; returns True at once when the task is cancelled."""
        return self._cancel.wait(timeout_s)

    async def sleep_or_cancel(self, seconds: float) -> None:
        """Sleep in an async handler; a cancel interrupts it at once with asyncio.CancelledError."""
        if self.cancelled:
            raise asyncio.CancelledError
        await asyncio.sleep(seconds)

    def request_cancel(self) -> None:
        """Called by the worker to ask the handler to stop."""
        self._cancel.set()


class _SinkHandler(logging.Handler):
    """Hands each formatted record to the context's sink."""

    def __init__(self, sink: Callable[[str, str], None]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(record.levelname, self.format(record))
        except Exception:  # a log line must never break the handler
            self.handleError(record)


@dataclass(frozen=True)
class Handler:
    """A registered handler: what runs a kind, and whether it runs in a child process."""

    kind: str
    fn: HandlerFn
    is_async: bool
    process: bool

    @property
    def module(self) -> str:
        """The module a child process imports to find this handler again."""
        return self.fn.__module__


_registry: dict[str, Handler] = {}


def task(kind: str, *, process: bool = False) -> Callable[[F], F]:
    """Register fn as the handler of `kind`; sync functions always run in a child process."""
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ValueError(f"invalid task kind {kind!r}: 1-64 characters from A-Z a-z 0-9 _ . : -")

    def register(fn: F) -> F:
        is_async = inspect.iscoroutinefunction(fn)
        handler = Handler(kind=kind, fn=fn, is_async=is_async, process=process or not is_async)
        if handler.process and fn.__module__ == "__main__":
            raise ValueError(f"handler {kind!r} runs in a child process, so it must live in an importable module")
        existing = _registry.get(kind)
        if existing is not None and _qualified(existing.fn) != _qualified(fn):
            raise ValueError(f"task kind {kind!r} is already registered by {_qualified(existing.fn)}")
        _registry[kind] = handler
        return fn

    return register


def get_handler(kind: str) -> Handler | None:
    """The handler registered for kind, if any."""
    return _registry.get(kind)


def registered_kinds() -> list[str]:
    """Every registered kind, sorted."""
    return sorted(_registry)


def _qualified(fn: HandlerFn) -> str:
    return f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"
