"""OperatorService: pause and resume task kinds, set and clear their rate limits (services.core.kind_controls),
and drain workers (services.core.worker_drain).

Every call needs the operator role, read from PostgreSQL on each call before anything else: a token says who
the caller is, never what they may do, so a revoked role takes effect at the next call.
"""

from __future__ import annotations

import time

import asyncpg
import grpc
import redis.asyncio as aioredis
from google.protobuf import duration_pb2

from resilienttask.v1 import operator_pb2, operator_pb2_grpc
from services.core import kind_controls, worker_drain, worker_registry
from services.core.auth_interceptor import current_user_id
from services.core.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable, translate_errors
from services.core.field_limits import rule
from services.core.kind_controls import KindControl
from services.core.worker_credentials import worker_id_problem

SERVICE_NAME = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
# The kind of every call declares the same bounds (PauseKind, ResumeKind, SetKindRateLimit, ClearKindRateLimit).
KIND = rule(operator_pb2.PauseKindRequest, "kind")
RATE_STARTS = rule(operator_pb2.RateLimit, "starts")
RATE_PERIOD = rule(operator_pb2.RateLimit, "period")
DRAIN_GRACE = rule(operator_pb2.DrainWorkerRequest, "grace")
DEFAULT_DRAIN_GRACE_MS = 30_000
# How long DrainWorker waits for the scheduler holding the worker's stream to confirm.
DRAIN_CONFIRM_S = 5.0
NOT_OPERATOR = (
    "the operator role is needed for this call; an administrator grants it on the server with "
    "`python -m services.gateway.operators grant EMAIL`"
)


def kind_of(value: str) -> str:
    KIND.text("kind", value)
    if not value.isprintable():
        raise InvalidArgument(
            "kind", f"must be {KIND.limits.min_chars} to {KIND.limits.max_chars} printable characters"
        )
    return value


def rate_of(request: operator_pb2.SetKindRateLimitRequest) -> tuple[int, int]:
    """(starts, period in ms) of a valid rate limit."""
    if not request.HasField("rate_limit"):
        raise InvalidArgument("rate_limit", "is required")
    limit = request.rate_limit
    RATE_STARTS.number("rate_limit.starts", limit.starts)
    period = limit.period
    if not limit.HasField("period") or period.nanos % 1_000_000 or period.seconds < 0 or period.nanos < 0:
        raise InvalidArgument("rate_limit.period", "is required, in whole milliseconds")
    return limit.starts, RATE_PERIOD.duration("rate_limit.period", period.ToMilliseconds())


def worker_id_of(value: str) -> str:
    if not value:
        raise InvalidArgument("worker_id", "is required")
    if worker_id_problem(value) is not None:
        raise InvalidArgument("worker_id", "must be 1 to 128 letters, digits, '.', '_', '-', ':'")
    return value


def drain_grace_ms(request: operator_pb2.DrainWorkerRequest) -> int:
    if not request.HasField("grace"):
        return DEFAULT_DRAIN_GRACE_MS
    grace = request.grace
    if grace.seconds < 0 or grace.nanos < 0 or grace.nanos % 1_000_000:
        raise InvalidArgument("grace", "must be whole milliseconds, not negative")
    return DRAIN_GRACE.duration("grace", grace.ToMilliseconds())


def to_message(control: KindControl) -> operator_pb2.KindControl:
    message = operator_pb2.KindControl(kind=control.kind, paused=control.paused_at is not None, waiting=control.waiting)
    if control.paused_at is not None:
        message.paused_at.FromDatetime(control.paused_at)
    if control.rate_starts is not None and control.rate_period_ms is not None:
        message.rate_limit.starts = control.rate_starts
        message.rate_limit.period.CopyFrom(
            duration_pb2.Duration(
                seconds=control.rate_period_ms // 1000, nanos=control.rate_period_ms % 1000 * 1_000_000
            )
        )
    return message


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.pool = pool
        self.redis = redis
        self.kinds = worker_registry.KindsCache(redis)

    async def _operator(self) -> None:
        if not await kind_controls.is_operator(self.pool, current_user_id()):
            raise PermissionDenied(NOT_OPERATOR)

    @translate_errors
    async def ListKindControls(
        self, request: operator_pb2.ListKindControlsRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ListKindControlsResponse:
        await self._operator()
        controls = await kind_controls.list_controls(self.pool, await self.kinds.kinds())
        return operator_pb2.ListKindControlsResponse(kinds=[to_message(c) for c in controls])

    @translate_errors
    async def PauseKind(
        self, request: operator_pb2.PauseKindRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.PauseKindResponse:
        await self._operator()
        kind = kind_of(request.kind)
        return operator_pb2.PauseKindResponse(kind=to_message(await kind_controls.pause(self.pool, kind)))

    @translate_errors
    async def ResumeKind(
        self, request: operator_pb2.ResumeKindRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ResumeKindResponse:
        await self._operator()
        kind = kind_of(request.kind)
        return operator_pb2.ResumeKindResponse(kind=to_message(await kind_controls.resume(self.pool, kind)))

    @translate_errors
    async def SetKindRateLimit(
        self, request: operator_pb2.SetKindRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.SetKindRateLimitResponse:
        await self._operator()
        kind = kind_of(request.kind)
        starts, period_ms = rate_of(request)
        control = await kind_controls.set_rate_limit(self.pool, kind, starts, period_ms)
        return operator_pb2.SetKindRateLimitResponse(kind=to_message(control))

    @translate_errors
    async def ClearKindRateLimit(
        self, request: operator_pb2.ClearKindRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ClearKindRateLimitResponse:
        await self._operator()
        kind = kind_of(request.kind)
        return operator_pb2.ClearKindRateLimitResponse(
            kind=to_message(await kind_controls.clear_rate_limit(self.pool, kind))
        )

    @translate_errors
    async def DrainWorker(
        self, request: operator_pb2.DrainWorkerRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.DrainWorkerResponse:
        await self._operator()
        worker_id = worker_id_of(request.worker_id)
        grace_ms = drain_grace_ms(request)
        worker = next((w for w in await worker_registry.live_workers(self.redis) if w.id == worker_id), None)
        if worker is None:
            raise NotFound(f"worker_id: no live worker {worker_id!r} in the pool")
        deadline = await worker_registry.mark_draining(self.redis, worker_id, time.time() + grace_ms / 1000)
        if not await worker_drain.request_drain(self.redis, worker_id, deadline, DRAIN_CONFIRM_S):
            raise Unavailable(
                f"worker_id: the scheduler of worker {worker_id!r} did not confirm the drain within "
                f"{DRAIN_CONFIRM_S:g} s; the worker is marked draining and drains at its next heartbeat "
                "(call again to confirm)"
            )
        return operator_pb2.DrainWorkerResponse(worker=worker.to_proto(deadline))
