"""Entry of a handler's child process: a fresh interpreter running exactly one handler call.

Protocol (JSON lines): the parent writes the task spec on stdin, later maybe `cancel`; the child
writes `{"progress": x}` messages, `{"log": [level, text]}` for each record of the handler's logger (and
`{"dropped": n}` for records over the rate bound), and one final `{"result": value}` or `{"error": text}` on
its original stdout, which is kept for these messages only. The handler's own stdout (fd 1) is the pipe whose
descriptor the worker names as the first argument, and its stderr (fd 2) another pipe: the worker reads both
line by line into the task's log, whoever writes them (the handler, a library, a process it started).
EOF on stdin means the worker died: the child exits.
This module imports only the standard library and the handler registry, so it starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
import threading
import time
import traceback
from typing import IO, Any

from resilienttask.handlers import Handler, TaskContext, get_handler
from services.core.token_bucket import TokenBucket

CANCEL_COMMAND = "cancel"
# Progress messages leave at most this often; the last value is always sent before the outcome.
PROGRESS_INTERVAL_S = 0.05
# Exit status when the worker (our stdin) went away.
ORPHANED_EXIT_CODE = 75


class MessagePipe:
    """Writes JSON lines to the parent, coalescing progress in a background thread."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()
        # Logger records over this bound are only counted (the worker bounds them again); set from the spec.
        self._log_bucket = TokenBucket(100.0, 1000.0)
        self._log_dropped = 0
        self._pending: float | None = None
        self._wake = threading.Event()
        threading.Thread(target=self._flush_loop, name="progress", daemon=True).start()

    def progress(self, fraction: float) -> None:
        with self._lock:
            self._pending = fraction
        self._wake.set()

    def limit_logs(self, rate_per_s: float, burst: float) -> None:
        self._log_bucket = TokenBucket(rate_per_s, burst)

    def log(self, level: str, text: str) -> None:
        """One record of the handler's logger (any thread); over the bound, only counted."""
        with self._lock:
            if not self._log_bucket.take():
                self._log_dropped += 1
                return
            dropped, self._log_dropped = self._log_dropped, 0
        if dropped:
            self._write({"dropped": dropped})
        self._write({"log": [level, text]})

    def final(self, message: dict[str, Any]) -> None:
        self._flush_progress()
        with self._lock:
            dropped, self._log_dropped = self._log_dropped, 0
        if dropped:
            self._write({"dropped": dropped})
        self._write(message)

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self._flush_progress()
            time.sleep(PROGRESS_INTERVAL_S)

    def _flush_progress(self) -> None:
        with self._lock:
            value, self._pending = self._pending, None
        if value is not None:
            self._write({"progress": value})

    def _write(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, allow_nan=False).encode() + b"\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()


def describe_error(exc: BaseException) -> str:
    """`Type: message`, or just the type when the message is empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _watch_parent(ctx: TaskContext, on_cancel: list[Any]) -> None:
    """Read commands from the parent; a cancel sets the context's flag, EOF ends the process."""
    for raw in sys.stdin.buffer:
        if raw.strip().decode() == CANCEL_COMMAND:
            ctx.request_cancel()
            for callback in on_cancel:
                callback()
    os._exit(ORPHANED_EXIT_CODE)


def _run_async(handler: Handler, ctx: TaskContext, on_cancel: list[Any]) -> Any:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        call = asyncio.ensure_future(handler.fn(ctx))
        on_cancel.append(lambda: loop.call_soon_threadsafe(call.cancel))
        if ctx.cancelled:
            call.cancel()
        return await call

    return asyncio.run(main())


def drop_privileges(run_as: Any) -> None:
    """Become (uid, gid) for good, with no supplementary groups; nothing when run_as is empty.

    Called before the handler runs: its code (and whatever a payload makes it do) then cannot read the
    worker's secret files nor /proc/<worker>/environ. As root, setuid sets the real, effective and saved
    uid, so the way back is closed; that is checked rather than assumed.
    """
    if not run_as:
        return
    uid, gid = int(run_as[0]), int(run_as[1])
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise PermissionError(f"could not become uid {uid} / gid {gid}")


def run(spec: dict[str, Any], pipe: MessagePipe) -> None:
    """Import the handler's module, give up privileges, call the handler, and send its outcome.

    The module is imported first (the worker itself imported it at start-up, with the same rights); the
    handler call runs as the unprivileged user.
    """
    sys.path[:] = [p for p in spec.get("sys_path", []) if isinstance(p, str)] or sys.path
    importlib.import_module(spec["module"])
    handler = get_handler(spec["kind"])
    if handler is None:
        pipe.final({"error": f"module {spec['module']} registers no handler for kind {spec['kind']!r}"})
        return
    drop_privileges(spec.get("run_as"))
    if "log_rate" in spec:
        pipe.limit_logs(float(spec["log_rate"]), float(spec["log_burst"]))
    ctx = TaskContext(
        task_id=spec["task_id"],
        attempt=int(spec["attempt"]),
        payload=spec["payload"],
        workload_s=float(spec["workload_s"]),
        _progress_sink=pipe.progress,
        _log_sink=pipe.log,
    )
    on_cancel: list[Any] = []
    threading.Thread(target=_watch_parent, args=(ctx, on_cancel), name="commands", daemon=True).start()
    try:
        value = _run_async(handler, ctx, on_cancel) if handler.is_async else handler.fn(ctx)
    except BaseException as exc:
        traceback.print_exc()
        _flush_output()
        pipe.final({"error": describe_error(exc)})
        return
    _flush_output()
    try:
        pipe.final({"result": value})
    except (TypeError, ValueError) as exc:
        pipe.final({"error": f"result is not JSON-compatible: {exc}"})


def _flush_output() -> None:
    """What the handler printed reaches its pipes before the outcome is sent."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    # The handler's stdout: the pipe the worker passed (its descriptor number is our first argument).
    output_fd = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    os.dup2(output_fd, 1)
    if output_fd > 2:
        os.close(output_fd)
    # Line by line, so a print reaches the task's log while the handler runs.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    spec = json.loads(sys.stdin.buffer.readline() or b"{}")
    pipe = MessagePipe(out)
    try:
        run(spec, pipe)
    except Exception as exc:  # a broken spec or import: report it as the outcome instead of dying silently
        traceback.print_exc()
        pipe.final({"error": f"handler process could not start: {type(exc).__name__}: {exc}"})
    out.close()
    # Skip interpreter teardown: daemon threads may still be blocked reading stdin.
    os._exit(0)


if __name__ == "__main__":
    main()
