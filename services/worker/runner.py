"""One attempt of a task: run the handler, enforce max_runtime, stop it on cancel, and say how it ended."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from resilienttask.handlers import Handler
from resilienttask.worker.v1 import worker_pb2
from services.worker.child import describe_error
from services.worker.execution import Execution, HandlerResult, ProgressSink, TaskSpec, create_execution
from services.worker.isolation import IsolationConfig
from services.worker.logs import AttemptLog

# Error texts beyond this are cut: they end up in a database column and in every watch event.
MAX_ERROR_CHARS = 2000
# A result beyond this (as JSON) fails the attempt rather than bloating every later read of the task.
MAX_RESULT_BYTES = 64 * 1024


@dataclass(frozen=True)
class AttemptOutcome:
    """What the worker reports for an attempt."""

    outcome: worker_pb2.Outcome
    error: str = ""
    result: Any = None
    # True when the handler did not stop within the grace period (killed, or abandoned in-process).
    forced: bool = False


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def check_result(value: Any) -> str | None:
    """Why value cannot be a task result, or None when it can (JSON-compatible and small enough)."""
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"result is not JSON-compatible: {exc}"
    if len(encoded) > MAX_RESULT_BYTES:
        return f"result is {len(encoded)} bytes as JSON; the limit is {MAX_RESULT_BYTES}"
    return None


class Attempt:
    """Runs one handler call; `cancel()` asks it to stop, and a kill follows after the grace period."""

    def __init__(
        self,
        handler: Handler,
        spec: TaskSpec,
        *,
        on_progress: ProgressSink,
        cancel_grace_s: float,
        isolation: IsolationConfig | None = None,
        log: AttemptLog | None = None,
        log_rate: tuple[float, float] = (100.0, 1000.0),
    ) -> None:
        self.spec = spec
        self.cancel_grace_s = cancel_grace_s
        self.execution: Execution = create_execution(handler, spec, on_progress, isolation, log, log_rate)
        self._stop = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.execution.pid

    def cancel(self, *, grace_s: float | None = None) -> None:
        """Ask the handler to stop (idempotent); grace_s overrides the grace period (0 = kill at once)."""
        if grace_s is not None:
            self.cancel_grace_s = min(self.cancel_grace_s, grace_s)
        self._stop.set()

    async def run(self) -> AttemptOutcome:
        try:
            await self.execution.start()
        except Exception as exc:
            error = truncate(f"could not start handler: {describe_error(exc)}")
            return AttemptOutcome(worker_pb2.OUTCOME_FAILED, error)
        stop_requested = asyncio.ensure_future(self._stop.wait())
        try:
            timeout = self.spec.max_runtime_s if self.spec.max_runtime_s > 0 else None
            waiting: set[asyncio.Future[Any]] = {self.execution.done, stop_requested}
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if self.execution.done.done():
                return self._finished(self.execution.done.result())
            return await self._stop_handler(timed_out=not self._stop.is_set())
        except asyncio.CancelledError:
            # The worker itself is going away: never leave a child process behind.
            await self.execution.kill()
            raise
        finally:
            stop_requested.cancel()

    def _finished(self, result: HandlerResult) -> AttemptOutcome:
        if not result.ok:
            return AttemptOutcome(worker_pb2.OUTCOME_FAILED, truncate(result.error or "handler failed"))
        problem = check_result(result.value)
        if problem is not None:
            return AttemptOutcome(worker_pb2.OUTCOME_FAILED, problem)
        return AttemptOutcome(worker_pb2.OUTCOME_SUCCEEDED, result=result.value)

    async def _stop_handler(self, *, timed_out: bool) -> AttemptOutcome:
        """Cooperative stop first; after the grace period, force. The text says which it was."""
        started = time.monotonic()
        self.execution.request_stop()
        grace_s = self.cancel_grace_s
        done, _ = await asyncio.wait({self.execution.done}, timeout=grace_s)
        forced = not done
        if done:
            how = f"stopped cooperatively after {_ms(time.monotonic() - started)}"
        elif await self.execution.kill():
            how = f"killed after {_ms(grace_s)} grace"
        else:
            how = (
                f"abandoned after {_ms(grace_s)} grace: the in-process handler ignored cancellation "
                "(register it with process=True so it can be killed)"
            )
        if timed_out:
            return AttemptOutcome(
                worker_pb2.OUTCOME_TIMED_OUT,
                f"max_runtime of {_seconds(self.spec.max_runtime_s)} exceeded; {how}",
                forced=forced,
            )
        return AttemptOutcome(worker_pb2.OUTCOME_CANCELLED, how, forced=forced)
