"""The worker's gRPC link to the schedulers (through the edge): one Connect stream carries everything.

Up go the hello, heartbeats, progress and work requests (entries to start, outcomes to record); down come
the answers to those requests, heartbeat acks and pushed cancel commands. Work requests that are ready
together travel as one message. The stream is reopened with backoff whenever it breaks (a scheduler
restart, the edge moving us to another replica), and every (re)connect starts with the hello.

The link is "in contact" only while the scheduler answers: a stream that stays open but silent (a
stalled network path) is given up after contact_timeout_s, so the worker claims no new entries, and keeps
its held ones alive only for the outage grace (Worker._may_refresh) through a scheduler it cannot reach.

A request that ends without an answer fails with LinkDown when it never left this process (the scheduler knows
nothing of it), and with AnswerLost once it was handed to the stream (the scheduler may have recorded it, e.g.
committed a start and died before replying): the worker asks again about such starts rather than let them go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core.tokens import IssuedToken
from services.core.worker_credentials import EnrolmentConfig
from services.worker.logs import LogShipper

log = logging.getLogger(__name__)

# The token is renewed when less than this share of its lifetime remains (tokens live an hour by default).
TOKEN_RENEW_FRACTION = 0.5
ENROL_TIMEOUT_S = 10.0
# A stream that lived this long was healthy: the next reconnect starts with a short delay again.
HEALTHY_STREAM_S = 10.0
# A work request unanswered for this long is given up; the caller retries with backoff.
CALL_TIMEOUT_S = 10.0
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # No bandwidth probes: a PING after every message wakes the peer for nothing on a path of small messages.
    ("grpc.http2.bdp_probe", 0),
    # A name that resolves to several schedulers (a compose service) spreads new streams over them.
    ("grpc.lb_policy_name", "round_robin"),
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
    """The worker's bearer token, issued by a scheduler: first for the enrolment secret, then renewed with
    itself (over the Enrol RPC) once half its lifetime has passed. The worker never holds a signing key."""

    def __init__(self, enrolment: EnrolmentConfig, worker_id: str) -> None:
        self.enrolment = enrolment
        self.worker_id = worker_id
        self._token: IssuedToken | None = None
        self._renew_at = 0.0

    async def metadata(self, stub: worker_pb2_grpc.WorkerServiceStub) -> tuple[tuple[str, str], ...]:
        """The header for the next call; enrols or renews first when due (errors reach the caller)."""
        now = time.time()
        if self._token is None or now >= self._renew_at:
            renewal = self._token is not None
            reply = await self._issue(stub)
            expires_at = float(reply.expires_at.seconds)
            self._token = IssuedToken(reply.token, expires_at)
            self._renew_at = now + (expires_at - now) * (1 - TOKEN_RENEW_FRACTION)
            log.info("worker token issued", extra={"worker": self.worker_id, "renewal": renewal})
        assert self._token is not None
        return (("authorization", f"Bearer {self._token.token}"),)

    async def _issue(self, stub: worker_pb2_grpc.WorkerServiceStub) -> worker_pb2.EnrolResponse:
        """Renew with the token we hold, even expired (an outage may outlast it: the id is ours, and enrolling it
        again is refused); enrol with the secret when we hold none, or the schedulers no longer renew it."""
        if self._token is not None:
            try:
                return await self._enrol(stub, self._token.token)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED or time.time() < self._token.expires_at - 1:
                    raise
                log.warning("expired worker token not renewed; enrolling again", extra={"worker": self.worker_id})
        return await self._enrol(stub, self.enrolment.secret.decode())

    async def _enrol(self, stub: worker_pb2_grpc.WorkerServiceStub, credential: str) -> worker_pb2.EnrolResponse:
        reply: worker_pb2.EnrolResponse = await stub.Enrol(
            worker_pb2.EnrolRequest(worker_id=self.worker_id),
            metadata=(("authorization", f"Bearer {credential}"),),
            timeout=ENROL_TIMEOUT_S,
        )
        return reply

    async def keep_fresh(self, stub: worker_pb2_grpc.WorkerServiceStub) -> None:
        """Renew the token while a stream lives on, so the next reconnect still holds a live one."""
        while True:
            await asyncio.sleep(max(1.0, self._renew_at - time.time()))
            try:
                await self.metadata(stub)
            except grpc.aio.AioRpcError as exc:
                log.warning("token renewal failed; retrying", extra={"code": exc.code().name})


# The end-of-stream marker of call.read() (missing from the type stubs).
STREAM_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

CommandHandler = Callable[[worker_pb2.CancelCommand], None]


class LinkDown(Exception):
    """The stream broke (or went silent) before the scheduler answered: ask again later."""


class AnswerLost(LinkDown):
    """The request was handed to the stream, but no answer came back (the stream broke or went silent, or the
    call timed out): the scheduler may have recorded it. A start it recorded is resumed when asked again (same
    attempt, same fence), so the caller keeps its entries and asks again rather than let them go."""


class WorkRefused(Exception):
    """The scheduler answered a request with an error; `permanent` when asking again cannot help. The half of the
    request that did not fail (its starts, or its outcomes) may have committed: asking again finds it."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class _Ask:
    """One caller's share of a work request, and the future its answer goes to."""

    finish: Sequence[worker_pb2.FinishItem]
    start: Sequence[worker_pb2.StartItem]
    # Set once the request carrying it was handed to the stream: from then on the scheduler may have recorded it.
    written: bool = False
    answer: asyncio.Future[tuple[list[worker_pb2.FinishResult], list[worker_pb2.StartResult]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SchedulerLink:
    """`run()` keeps one Connect stream open to one of the schedulers until `close()`.

    The worker is given every scheduler's address (or one name that resolves to all of them, or the edge):
    each new stream goes to the next address, starting at a random one, so workers spread over the
    schedulers and a dead one is passed over at the next reconnect.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        tokens: WorkerTokens,
        hello: worker_pb2.WorkerHello,
        on_command: CommandHandler,
        on_connected: Callable[[], Awaitable[None]],
        contact_timeout_s: float = 3.0,
        on_drain: Callable[[float], None] | None = None,
    ) -> None:
        self.tokens = tokens
        # Called with the grace in seconds when the scheduler pushes a drain command.
        self.on_drain = on_drain
        self.hello = hello
        self.on_command = on_command
        self.on_connected = on_connected
        self.contact_timeout_s = contact_timeout_s
        if not addresses:
            raise ValueError("at least one scheduler address is required")
        self.addresses = list(addresses)
        self._next_address = random.randrange(len(self.addresses))
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._call: grpc.aio.StreamStreamCall[worker_pb2.ConnectRequest, worker_pb2.ConnectResponse] | None = None
        self._write_lock = asyncio.Lock()
        self._closed = False
        # Set while the scheduler answers on the current stream; cleared when it breaks or goes silent.
        self.connected = asyncio.Event()
        # The last answer before contact was lost (monotonic); None while in contact and before the first.
        self.contact_lost_at: float | None = None
        self.last_contact = 0.0
        self._asks: list[_Ask] = []
        self._asked = asyncio.Event()
        self._in_flight: dict[int, list[_Ask]] = {}
        self._request_ids = 0
        self._heartbeats = 0
        # What handlers logged: sent before the outcomes of their attempts (services.worker.logs).
        self.logs: LogShipper | None = None

    # -- the stream -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep the stream open: connect, say hello, read; reconnect with backoff when it breaks."""
        backoff = Backoff()
        while not self._closed:
            opened = time.monotonic()
            try:
                await self._session()
            except grpc.aio.AioRpcError as exc:
                if not self._closed:
                    log.warning("connect stream broke", extra={"code": exc.code().name, "detail": exc.details()})
            except asyncio.CancelledError:
                # A call cancelled here (the silence watch gave it up) raises CancelledError in its reader;
                # only a cancellation of this task itself ends the link.
                if _this_task_cancelled():
                    raise
                if not self._closed:
                    log.warning("connect stream given up")
            except Exception as exc:  # whatever broke the session, the stream must come back
                if not self._closed:
                    log.warning("connect stream failed", extra={"error": repr(exc)})
            finally:
                self._lose_contact()
                self._call = None
                self._fail_all("the stream to the scheduler broke")
            if time.monotonic() - opened > HEALTHY_STREAM_S:
                backoff.reset()
            if not self._closed:
                await asyncio.sleep(backoff.next_delay_s())

    def _stub(self) -> worker_pb2_grpc.WorkerServiceStub:
        address = self.addresses[self._next_address % len(self.addresses)]
        self._next_address += 1
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return worker_pb2_grpc.WorkerServiceStub(self._channels[address])

    async def _session(self) -> None:
        stub = self._stub()
        call = stub.Connect(metadata=await self.tokens.metadata(stub))
        self._call = call
        self.last_contact = time.monotonic()  # the silence watch starts with the stream
        await call.write(worker_pb2.ConnectRequest(hello=self.hello))
        helpers = [
            asyncio.create_task(self._send_work(call), name="send-work"),
            asyncio.create_task(self._watch_silence(call), name="watch-silence"),
            asyncio.create_task(self.tokens.keep_fresh(stub), name="renew-token"),
        ]
        try:
            # The announcement's heartbeat is the first thing the scheduler answers: contact from then on.
            await self.on_connected()
            await self._read(call)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _read(
        self, call: grpc.aio.StreamStreamCall[worker_pb2.ConnectRequest, worker_pb2.ConnectResponse]
    ) -> None:
        while True:
            message = await call.read()
            if message is STREAM_EOF:
                if not self._closed:
                    log.warning("scheduler ended the connect stream")
                return
            assert isinstance(message, worker_pb2.ConnectResponse)
            self.last_contact = time.monotonic()
            if not self.connected.is_set():
                self.connected.set()
                self.contact_lost_at = None
                log.info("in contact with the scheduler", extra={"worker": self.hello.worker_id})
            if message.HasField("drain") and self.on_drain is not None:
                # Before the answers of the same message: they may be the scheduler's refusals because of it.
                self.on_drain(message.drain.grace.ToMilliseconds() / 1000)
            for response in message.work:
                self._answer(response)
            for command in message.cancels:
                self.on_command(command)

    def _lose_contact(self) -> None:
        if self.connected.is_set():
            self.contact_lost_at = self.last_contact
        self.connected.clear()

    def out_of_contact_s(self) -> float | None:
        """How long since the last answer of a scheduler, when contact is lost; 0 in contact; None before any."""
        if self.connected.is_set():
            return 0.0
        return None if self.contact_lost_at is None else time.monotonic() - self.contact_lost_at

    async def _watch_silence(self, call: grpc.aio.StreamStreamCall[worker_pb2.ConnectRequest, Any]) -> None:
        """Give up a stream the scheduler stopped answering on: a stalled path never closes by itself."""
        while True:
            silent_s = time.monotonic() - self.last_contact
            if silent_s > self.contact_timeout_s:
                log.warning("scheduler silent; reconnecting", extra={"silent_s": round(silent_s, 2)})
                self._lose_contact()
                call.cancel()
                return
            await asyncio.sleep(self.contact_timeout_s - silent_s + 0.01)

    async def send(self, request: worker_pb2.ConnectRequest) -> bool:
        """Write one message on the stream; False when it is down (the caller decides whether to keep it)."""
        call = self._call
        if call is None:
            return False
        async with self._write_lock:
            try:
                await call.write(request)
            except asyncio.CancelledError:
                if _this_task_cancelled():
                    raise
                return False  # the call was given up under us
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                log.debug("stream write failed", extra={"error": repr(exc)})
                return False
        return True

    async def heartbeat(self, tasks: Sequence[worker_pb2.HeldTask], drain_remaining_s: float | None = None) -> bool:
        """drain_remaining_s: while draining, seconds until what still runs is handed back."""
        self._heartbeats += 1
        beat = worker_pb2.WorkerHeartbeat(tasks=tasks, sequence=self._heartbeats)
        if drain_remaining_s is not None:
            beat.draining = True
            beat.drain_remaining.FromMilliseconds(int(drain_remaining_s * 1000))
        return await self.send(worker_pb2.ConnectRequest(heartbeat=beat))

    # -- work requests --------------------------------------------------------------------------
    async def start_tasks(self, items: Sequence[worker_pb2.StartItem]) -> list[worker_pb2.StartResult]:
        """The scheduler's decision for each entry, in order."""
        _, started = await self._ask(_Ask(finish=(), start=items))
        return started

    async def finish_tasks(self, items: Sequence[worker_pb2.FinishItem]) -> list[worker_pb2.FinishResult]:
        """Whether each outcome was recorded, in order."""
        finished, _ = await self._ask(_Ask(finish=items, start=()))
        return finished

    async def _ask(self, ask: _Ask) -> tuple[list[worker_pb2.FinishResult], list[worker_pb2.StartResult]]:
        if not self.connected.is_set():
            raise LinkDown("not in contact with a scheduler")
        self._asks.append(ask)
        self._asked.set()
        try:
            return await asyncio.wait_for(ask.answer, timeout=CALL_TIMEOUT_S)
        except TimeoutError as exc:
            raise _unanswered(ask, f"no answer within {CALL_TIMEOUT_S} s") from exc

    async def _send_work(self, call: grpc.aio.StreamStreamCall[worker_pb2.ConnectRequest, Any]) -> None:
        """Whatever callers asked while the previous write was under way goes in one request."""
        while True:
            await self._asked.wait()
            self._asked.clear()
            asks, self._asks = [a for a in self._asks if not a.answer.done()], []
            if not asks:
                continue
            finishing = {item.task.task_id for ask in asks for item in ask.finish}
            if finishing and self.logs is not None:
                # Stored before the outcome: once a task is finished, its log is complete.
                await self.logs.flush(finishing)
            self._request_ids += 1
            request = worker_pb2.WorkRequest(request_id=self._request_ids)
            for ask in asks:
                request.finish.extend(ask.finish)
                request.start.extend(ask.start)
            self._in_flight[request.request_id] = asks
            for ask in asks:
                # Counted from the attempt: a write that fails part-way may still have reached the scheduler.
                ask.written = True
            if not await self.send(worker_pb2.ConnectRequest(work=request)):
                self._in_flight.pop(request.request_id, None)
                _fail_each(asks, "could not write to the scheduler")

    def _answer(self, response: worker_pb2.WorkResponse) -> None:
        asks = self._in_flight.pop(response.request_id, None)
        if asks is None:
            return  # its callers gave up (timed out) already
        if response.error:
            _fail(asks, WorkRefused(response.error, permanent=response.permanent))
            return
        if len(response.finish) != sum(len(a.finish) for a in asks) or len(response.start) != sum(
            len(a.start) for a in asks
        ):
            _fail(asks, WorkRefused("the answer does not match the request", permanent=False))
            return
        finished, started = iter(response.finish), iter(response.start)
        for ask in asks:
            if not ask.answer.done():
                ask.answer.set_result(([next(finished) for _ in ask.finish], [next(started) for _ in ask.start]))

    def _fail_all(self, reason: str) -> None:
        asks = self._asks + [ask for batch in self._in_flight.values() for ask in batch]
        self._asks, self._in_flight = [], {}
        _fail_each(asks, reason)

    async def close(self) -> None:
        """End the stream (the scheduler sees the worker leave) and the channel."""
        self._closed = True
        call = self._call
        if call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                await call.done_writing()
            call.cancel()
        for channel in self._channels.values():
            await channel.close(grace=None)


def _this_task_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not merely a gRPC call it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _fail(asks: Sequence[_Ask], exc: Exception) -> None:
    for ask in asks:
        if not ask.answer.done():
            ask.answer.set_exception(exc)


def _unanswered(ask: _Ask, reason: str) -> LinkDown:
    """Why an ask ends without an answer: AnswerLost once it was written (the scheduler may have recorded it),
    LinkDown before (it never left this process)."""
    return AnswerLost(reason) if ask.written else LinkDown(reason)


def _fail_each(asks: Sequence[_Ask], reason: str) -> None:
    for ask in asks:
        _fail([ask], _unanswered(ask, reason))
