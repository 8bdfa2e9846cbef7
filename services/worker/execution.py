"""Where one handler call runs: as an asyncio task in the worker, or in a fresh child interpreter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resilienttask.handlers import Handler, TaskContext
from services.core.task_logs import MAX_LINE_BYTES
from services.worker.child import CANCEL_COMMAND, describe_error
from services.worker.isolation import IsolationConfig
from services.worker.logs import LOGGER, STDERR, STDOUT, AttemptLog

log = logging.getLogger(__name__)

CHILD_MODULE = "services.worker.child"
# Longest line a child may send (its result); results are capped far below this by the runner.
CHILD_LINE_LIMIT_BYTES = 1 << 20
# How often an abandoned in-process handler is cancelled again, in case it swallowed one cancellation.
RECANCEL_INTERVAL_S = 0.1
# A child's stdout and stderr are read in chunks of this size; a line longer than MAX_LINE_BYTES is cut.
OUTPUT_CHUNK_BYTES = 64 * 1024
# After the child exits, how long its output pipes may stay open (held by a process it started) before the
# reading stops: the outcome is not held back longer than this.
OUTPUT_DRAIN_S = 1.0

ProgressSink = Callable[[float], None]


@dataclass(frozen=True)
class TaskSpec:
    """One attempt of a task, as the scheduler handed it over."""

    task_id: str
    kind: str
    attempt: int
    payload: dict[str, Any]
    workload_s: float
    # 0 means no ceiling.
    max_runtime_s: float


@dataclass(frozen=True)
class HandlerResult:
    """How the handler call itself ended: a value, or an error text."""

    ok: bool
    value: Any = None
    error: str = ""


class Execution(ABC):
    """A handler call in flight; `done` resolves when it has ended, whatever the cause."""

    def __init__(
        self, handler: Handler, spec: TaskSpec, on_progress: ProgressSink, log: AttemptLog | None = None
    ) -> None:
        self.handler = handler
        self.spec = spec
        self.on_progress = on_progress
        self.log = log
        self.done: asyncio.Future[HandlerResult] = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int | None:
        """The child's pid, for handlers that run in a process."""
        return None

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    def request_stop(self) -> None:
        """Ask the handler to stop cooperatively; returns at once."""

    @abstractmethod
    async def kill(self) -> bool:
        """Stop the handler by force; True when it is certainly gone, False when it could only be abandoned."""

    def _settle(self, result: HandlerResult) -> None:
        if not self.done.done():
            self.done.set_result(result)


class InProcessExecution(Execution):
    """An async handler as an asyncio task of the worker: cancellation is its only stop.

    It runs inside the worker, with the worker's memory, credentials and connections: in-process handlers
    are trusted code (the built-ins, and handlers an operator vouches for). Register user code with
    process=True (or write it sync) so it runs confined in a child process.
    """

    _abandoned: set[asyncio.Task[None]] = set()  # strong references to the re-cancelling loops

    def __init__(
        self, handler: Handler, spec: TaskSpec, on_progress: ProgressSink, log: AttemptLog | None = None
    ) -> None:
        super().__init__(handler, spec, on_progress, log)
        sink = log
        self.context = TaskContext(
            task_id=spec.task_id,
            attempt=spec.attempt,
            payload=spec.payload,
            workload_s=spec.workload_s,
            _progress_sink=on_progress,
            _log_sink=(lambda level, text: sink.line(LOGGER, level, text)) if sink else (lambda _level, _text: None),
        )
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.handler.fn(self.context), name=f"handler:{self.spec.task_id}")
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self._settle(HandlerResult(ok=False, error="CancelledError"))
        elif (exc := task.exception()) is not None:
            self._settle(HandlerResult(ok=False, error=describe_error(exc)))
        else:
            self._settle(HandlerResult(ok=True, value=task.result()))

    def request_stop(self) -> None:
        self.context.request_cancel()
        if self._task is not None:
            self._task.cancel()

    async def kill(self) -> bool:
        """An asyncio task cannot be killed: keep cancelling it in the background until it ends."""
        task = self._task
        if task is None or task.done():
            return True
        log.warning("in-process handler ignored cancellation; abandoned", extra={"task_id": self.spec.task_id})
        keeper = asyncio.create_task(_keep_cancelling(task, self.spec.task_id))
        self._abandoned.add(keeper)
        keeper.add_done_callback(self._abandoned.discard)
        return False


async def _keep_cancelling(task: asyncio.Task[Any], task_id: str) -> None:
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_INTERVAL_S)
    log.info("abandoned in-process handler ended", extra={"task_id": task_id})


class ChildProcessExecution(Execution):
    """A handler in a fresh interpreter (exec'd, never a fork that keeps the worker's memory), in its own
    process group, confined as IsolationConfig says: scrubbed environment, no inherited descriptors but its
    pipes, and an unprivileged user for the handler call when the worker is root."""

    def __init__(
        self,
        handler: Handler,
        spec: TaskSpec,
        on_progress: ProgressSink,
        isolation: IsolationConfig | None = None,
        log: AttemptLog | None = None,
        log_rate: tuple[float, float] = (100.0, 1000.0),
    ) -> None:
        super().__init__(handler, spec, on_progress, log)
        self.isolation = isolation or IsolationConfig()
        self.log_rate = log_rate
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._stdout_transport: asyncio.BaseTransport | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        spec = {
            "module": self.handler.module,
            "kind": self.spec.kind,
            "task_id": self.spec.task_id,
            "attempt": self.spec.attempt,
            "payload": self.spec.payload,
            "workload_s": self.spec.workload_s,
            "sys_path": sys.path,
            # The child counts logger records over this bound instead of sending them (the worker bounds them too).
            "log_rate": self.log_rate[0],
            "log_burst": self.log_rate[1],
        }
        # The child drops to this uid and gid (no supplementary groups) before it calls the handler, so the
        # worker's 0600 files and /proc/<worker>/environ stay out of reach. It switches itself, after its
        # start-up imports: the interpreter may live where only root can read (a pyenv under /root).
        spec["run_as"] = self.isolation.identity()
        # The handler's stdout: a pipe of its own (the child's original stdout carries the messages).
        output_read, output_write = os.pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                CHILD_MODULE,
                str(output_write),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group, so a kill also takes down whatever the handler started.
                start_new_session=True,
                limit=CHILD_LINE_LIMIT_BYTES,
                env=self.isolation.environment(os.environ),
                close_fds=True,  # only its pipes: no Redis or gRPC socket of the worker
                pass_fds=(output_write,),
            )
        except BaseException:
            os.close(output_read)
            raise
        finally:
            os.close(output_write)
        stdout, self._stdout_transport = await _pipe_reader(output_read)
        assert self._proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(stdout, STDOUT), name=f"stdout:{self.spec.task_id}"),
            asyncio.create_task(self._pump(self._proc.stderr, STDERR), name=f"stderr:{self.spec.task_id}"),
        ]
        self._reader = asyncio.create_task(self._read(self._proc), name=f"child:{self.spec.task_id}")
        self._send(json.dumps(spec).encode())

    def _send(self, line: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(line + b"\n")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        final: HandlerResult | None = None
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                final = self._handle_line(line) or final
        except ValueError:  # a line beyond the limit: the child misbehaves
            final = HandlerResult(ok=False, error="handler process sent an oversized message")
            self._signal_group(proc)
        returncode = await proc.wait()
        # What the handler printed is in the log before the outcome is known (a process it left behind
        # holding the pipes gets OUTPUT_DRAIN_S).
        _, late = await asyncio.wait(self._pumps, timeout=OUTPUT_DRAIN_S)
        for pump in late:
            pump.cancel()
        if self._stdout_transport is not None:
            self._stdout_transport.close()
        if proc.stdin is not None:
            proc.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.stdin.wait_closed()
        if final is None:
            final = HandlerResult(ok=False, error=_exit_text(returncode))
        self._settle(final)

    def _handle_line(self, line: bytes) -> HandlerResult | None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("unreadable message from handler process", extra={"task_id": self.spec.task_id})
            return None
        if not isinstance(message, dict):
            return None
        if "progress" in message and isinstance(message["progress"], (int, float)):
            self.on_progress(float(message["progress"]))
            return None
        if "log" in message:
            record = message["log"]
            if self.log is not None and isinstance(record, list) and len(record) == 2:
                self.log.line(LOGGER, str(record[0]), str(record[1]))
            return None
        if "dropped" in message:
            if self.log is not None and isinstance(message["dropped"], int):
                self.log.dropped(max(0, message["dropped"]))
            return None
        if "result" in message:
            return HandlerResult(ok=True, value=message["result"])
        if "error" in message:
            return HandlerResult(ok=False, error=str(message["error"]))
        return None

    async def _pump(self, reader: asyncio.StreamReader, stream: int) -> None:
        """Feed one output pipe into the task's log line by line. While no line would pass the rate bounds, a
        chunk's lines are only counted (no split, no decoding): a flood costs little more than reading it."""
        carry = b""
        # Set once an unfinished line passed the line limit and went out cut: the rest of it is skipped.
        skipping = False
        try:
            while chunk := await reader.read(OUTPUT_CHUNK_BYTES):
                if self.log is None:
                    continue
                data = carry + chunk if carry else chunk
                if skipping:
                    start = data.find(b"\n")
                    if start < 0:
                        continue
                    data, skipping = data[start + 1 :], False
                end = data.rfind(b"\n")
                carry = data[end + 1 :]  # the unfinished line (all of data when there is no newline)
                if end >= 0:
                    self._split(data[:end], stream)
                if len(carry) > MAX_LINE_BYTES:
                    self.log.raw_lines(stream, [carry[:MAX_LINE_BYTES]])
                    carry, skipping = b"", True
            if carry and self.log is not None:
                self.log.raw_lines(stream, [carry])
        except (OSError, ValueError) as exc:
            log.debug("handler output unreadable", extra={"task_id": self.spec.task_id, "error": repr(exc)})

    def _split(self, lines: bytes, stream: int) -> None:
        """Complete lines (joined by newlines): only those that can pass are split off, the rest only counted."""
        assert self.log is not None
        room = self.log.room()
        pieces = lines.split(b"\n", room) if room else [lines]
        if room and len(pieces) <= room:
            self.log.raw_lines(stream, pieces)
            return
        self.log.raw_lines(stream, pieces[:-1])
        self.log.dropped(pieces[-1].count(b"\n") + 1)

    def request_stop(self) -> None:
        self._send(CANCEL_COMMAND.encode())

    async def kill(self) -> bool:
        proc = self._proc
        if proc is None:
            return True
        self._signal_group(proc)
        await asyncio.shield(self.done)
        return True

    @staticmethod
    def _signal_group(proc: asyncio.subprocess.Process) -> None:
        # Only while unreaped: after wait() the pid (and group id) may belong to someone else.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


async def _pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """An asyncio reader on the read end of a pipe (owned by the transport from now on)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHILD_LINE_LIMIT_BYTES)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    return reader, transport


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"handler process was killed by {name}"
    return f"handler process exited with status {returncode} without an outcome"


def create_execution(
    handler: Handler,
    spec: TaskSpec,
    on_progress: ProgressSink,
    isolation: IsolationConfig | None = None,
    log: AttemptLog | None = None,
    log_rate: tuple[float, float] = (100.0, 1000.0),
) -> Execution:
    """In a child process when the handler asks for it (every sync handler does), else in-process."""
    if handler.process:
        return ChildProcessExecution(handler, spec, on_progress, isolation, log, log_rate)
    return InProcessExecution(handler, spec, on_progress, log)
