"""The worker's gRPC link to the schedulers (through the edge): the Connect stream and the unary calls.

The Connect stream carries heartbeats and progress up and cancel commands down. It is reopened with
backoff whenever it breaks (a scheduler restart, the edge moving us to another replica), and every
(re)connect starts with the hello.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from resilienttask.v1 import worker_pb2, worker_pb2_grpc
from services.core.config import AuthConfig
from services.core.tokens import IssuedToken, mint_worker_token

log = logging.getLogger(__name__)

# A fresh token is minted when less than this remains of the current one (tokens live an hour).
TOKEN_REFRESH_MARGIN_S = 1800
# A stream that lived this long was healthy: the next reconnect starts with a short delay again.
HEALTHY_STREAM_S = 10.0
# Unary calls give up after this; the caller retries with backoff.
CALL_TIMEOUT_S = 10.0
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class Backoff:
    """Exponential backoff with full jitter, reset after a success."""

    def __init__(self, initial_s: float = 0.05, maximum_s: float = 2.0) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.failures = 0

    def next_delay_s(self) -> float:
        ceiling = min(self.maximum_s, self.initial_s * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


class WorkerTokens:
    """The worker's bearer token, re-minted well before it expires."""

    def __init__(self, auth: AuthConfig, worker_id: str) -> None:
        self.auth = auth
        self.worker_id = worker_id
        self._token: IssuedToken | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self._token is None or self._token.expires_at - time.time() < TOKEN_REFRESH_MARGIN_S:
            self._token = mint_worker_token(self.auth, self.worker_id)
        return (("authorization", f"Bearer {self._token.token}"),)


# The end-of-stream marker of call.read() (missing from the type stubs).
STREAM_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

CommandHandler = Callable[[worker_pb2.CancelCommand], None]


class SchedulerLink:
    """One channel to the edge; `run()` keeps the Connect stream open until `close()`."""

    def __init__(
        self,
        address: str,
        tokens: WorkerTokens,
        hello: worker_pb2.WorkerHello,
        on_command: CommandHandler,
        on_connected: Callable[[], Awaitable[None]],
    ) -> None:
        self.tokens = tokens
        self.hello = hello
        self.on_command = on_command
        self.on_connected = on_connected
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = worker_pb2_grpc.WorkerServiceStub(self.channel)
        self._call: grpc.aio.StreamStreamCall[worker_pb2.ConnectRequest, worker_pb2.ConnectResponse] | None = None
        self._write_lock = asyncio.Lock()
        self._closed = False
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Keep the stream open: connect, say hello, read commands; reconnect with backoff when it breaks."""
        backoff = Backoff()
        while not self._closed:
            opened = time.monotonic()
            try:
                await self._session()
            except grpc.aio.AioRpcError as exc:
                if not self._closed:
                    log.warning("connect stream broke", extra={"code": exc.code().name, "detail": exc.details()})
            except Exception as exc:  # whatever broke the session, the stream must come back
                if not self._closed:
                    log.warning("connect stream failed", extra={"error": repr(exc)})
            finally:
                self.connected.clear()
                self._call = None
            if time.monotonic() - opened > HEALTHY_STREAM_S:
                backoff.reset()
            if not self._closed:
                await asyncio.sleep(backoff.next_delay_s())

    async def _session(self) -> None:
        call = self.stub.Connect(metadata=self.tokens.metadata())
        self._call = call
        await call.write(worker_pb2.ConnectRequest(hello=self.hello))
        self.connected.set()
        log.info("connected to scheduler", extra={"worker": self.hello.worker_id})
        await self.on_connected()
        while True:
            message = await call.read()
            if message is STREAM_EOF:
                if not self._closed:
                    log.warning("scheduler ended the connect stream")
                return
            if message.HasField("cancel"):
                self.on_command(message.cancel)

    async def send(self, request: worker_pb2.ConnectRequest) -> bool:
        """Write one message on the stream; False when it is down (the caller decides whether to keep it)."""
        call = self._call
        if call is None or not self.connected.is_set():
            return False
        async with self._write_lock:
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                log.debug("stream write failed", extra={"error": repr(exc)})
                return False
        return True

    async def start_tasks(self, items: Sequence[worker_pb2.StartItem]) -> worker_pb2.StartTasksResponse:
        request = worker_pb2.StartTasksRequest(worker_id=self.hello.worker_id, items=items)
        return await self.stub.StartTasks(request, metadata=self.tokens.metadata(), timeout=CALL_TIMEOUT_S)

    async def finish_tasks(self, items: Sequence[worker_pb2.FinishItem]) -> worker_pb2.FinishTasksResponse:
        request = worker_pb2.FinishTasksRequest(worker_id=self.hello.worker_id, items=items)
        return await self.stub.FinishTasks(request, metadata=self.tokens.metadata(), timeout=CALL_TIMEOUT_S)

    async def close(self) -> None:
        """End the stream (the scheduler sees the worker leave) and the channel."""
        self._closed = True
        call = self._call
        if call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                await call.done_writing()
            call.cancel()
        await self.channel.close(grace=None)
