"""OperatorService: pause and resume task kinds, set and clear their rate limits (services.core.kind_controls).

Every call needs the operator role, read from PostgreSQL on each call: a token says who the caller is, never
what they may do, so a revoked role takes effect at the next call.
"""

from __future__ import annotations

import asyncpg
import grpc
import redis.asyncio as aioredis
from google.protobuf import duration_pb2

from resilienttask.v1 import operator_pb2, operator_pb2_grpc
from services.core import kind_controls, worker_registry
from services.core.errors import InvalidArgument, PermissionDenied, translate_errors
from services.core.kind_controls import KindControl
from services.gateway.auth_interceptor import current_user_id

SERVICE_NAME = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
MAX_KIND_CHARS = 64
MAX_RATE_STARTS = 100_000
MIN_RATE_PERIOD_MS = 1_000
MAX_RATE_PERIOD_MS = 3_600_000
NOT_OPERATOR = (
    "the operator role is needed for this call; an administrator grants it on the server with "
    "`python -m services.gateway.operators grant EMAIL`"
)


def kind_of(value: str) -> str:
    if not value:
        raise InvalidArgument("kind", "is required")
    if len(value) > MAX_KIND_CHARS or not value.isprintable():
        raise InvalidArgument("kind", f"must be 1 to {MAX_KIND_CHARS} printable characters")
    return value


def rate_of(request: operator_pb2.SetKindRateLimitRequest) -> tuple[int, int]:
    """(starts, period in ms) of a valid rate limit."""
    if not request.HasField("rate_limit"):
        raise InvalidArgument("rate_limit", "is required")
    limit = request.rate_limit
    if not 1 <= limit.starts <= MAX_RATE_STARTS:
        raise InvalidArgument("rate_limit.starts", f"must be 1 to {MAX_RATE_STARTS:,}")
    period = limit.period
    if not limit.HasField("period") or period.nanos % 1_000_000 or period.seconds < 0 or period.nanos < 0:
        raise InvalidArgument("rate_limit.period", "is required, in whole milliseconds, 1 s to 1 h")
    period_ms = period.ToMilliseconds()
    if not MIN_RATE_PERIOD_MS <= period_ms <= MAX_RATE_PERIOD_MS:
        raise InvalidArgument("rate_limit.period", "must be 1 s to 1 h")
    return limit.starts, period_ms


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
        kind = kind_of(request.kind)
        await self._operator()
        return operator_pb2.PauseKindResponse(kind=to_message(await kind_controls.pause(self.pool, kind)))

    @translate_errors
    async def ResumeKind(
        self, request: operator_pb2.ResumeKindRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ResumeKindResponse:
        kind = kind_of(request.kind)
        await self._operator()
        return operator_pb2.ResumeKindResponse(kind=to_message(await kind_controls.resume(self.pool, kind)))

    @translate_errors
    async def SetKindRateLimit(
        self, request: operator_pb2.SetKindRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.SetKindRateLimitResponse:
        kind = kind_of(request.kind)
        starts, period_ms = rate_of(request)
        await self._operator()
        control = await kind_controls.set_rate_limit(self.pool, kind, starts, period_ms)
        return operator_pb2.SetKindRateLimitResponse(kind=to_message(control))

    @translate_errors
    async def ClearKindRateLimit(
        self, request: operator_pb2.ClearKindRateLimitRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ClearKindRateLimitResponse:
        kind = kind_of(request.kind)
        await self._operator()
        return operator_pb2.ClearKindRateLimitResponse(
            kind=to_message(await kind_controls.clear_rate_limit(self.pool, kind))
        )
