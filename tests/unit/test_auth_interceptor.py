"""The token interceptor on a real in-process grpc.aio server: every call shape is guarded, nothing else is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.core.auth_interceptor import AuthInterceptor, _current_user, bearer_token, current_user_id
from services.core.config import AuthConfig
from services.core.tokens import WORKER_AUDIENCE, mint_user_token, mint_worker_token

CONFIG = AuthConfig(jwt_secret=b"k" * 40)
GUARDED = "/test.Guarded/"


def _who() -> bytes:
    return current_user_id().encode()


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _who()


async def _client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return _who() + b"".join([r async for r in requests])


async def _server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield _who()


async def _server_stream_writer(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(_who())


async def _bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield _who() + request


async def _open(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return (_current_user.get() or "nobody").encode()


def _handlers() -> list[grpc.GenericRpcHandler]:
    guarded = grpc.method_handlers_generic_handler(
        "test.Guarded",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ServerStreamWriter": grpc.unary_stream_rpc_method_handler(_server_stream_writer),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        },
    )
    open_ = grpc.method_handlers_generic_handler("test.Open", {"Who": grpc.unary_unary_rpc_method_handler(_open)})
    return [guarded, open_]


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[AuthInterceptor(CONFIG, GUARDED, CONFIG.audience)])
    server.add_generic_rpc_handlers(_handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        await server.stop(0)


async def _requests() -> AsyncIterator[bytes]:
    for part in (b"-a", b"-b"):
        yield part


async def _silent_requests() -> AsyncIterator[bytes]:
    """A request stream that sends nothing until the call ends.

    The grpc.aio client reports INTERNAL instead of the server's status when one of its writes races
    the server ending the call (grpc/grpc#36066), so refused streams must not have a write in flight.
    """
    await asyncio.Event().wait()
    yield b""


async def _call_every_shape(channel: grpc.aio.Channel, metadata: Any, *, refused: bool = False) -> dict[str, Any]:
    """Call each guarded method; per method the result or the status code."""
    requests = _silent_requests if refused else _requests
    calls = {
        "Unary": lambda: channel.unary_unary(GUARDED + "Unary")(b"", metadata=metadata),
        "ClientStream": lambda: channel.stream_unary(GUARDED + "ClientStream")(requests(), metadata=metadata),
        "ServerStream": lambda: _collect(channel.unary_stream(GUARDED + "ServerStream")(b"", metadata=metadata)),
        "ServerStreamWriter": lambda: _collect(
            channel.unary_stream(GUARDED + "ServerStreamWriter")(b"", metadata=metadata)
        ),
        "Bidi": lambda: _collect(channel.stream_stream(GUARDED + "Bidi")(requests(), metadata=metadata)),
    }
    results: dict[str, Any] = {}
    for name, call in calls.items():
        try:
            results[name] = await call()
        except grpc.aio.AioRpcError as exc:
            results[name] = exc.code()
    return results


async def _collect(call: Any) -> list[bytes]:
    return [item async for item in call]


async def test_a_valid_token_reaches_every_call_shape_as_the_current_user(channel: grpc.aio.Channel) -> None:
    token = mint_user_token(CONFIG, "00000000-0000-4000-8000-000000000007").token
    results = await _call_every_shape(channel, (("authorization", f"Bearer {token}"),))
    assert results == {
        "Unary": b"00000000-0000-4000-8000-000000000007",
        "ClientStream": b"00000000-0000-4000-8000-000000000007-a-b",
        "ServerStream": [b"00000000-0000-4000-8000-000000000007", b"00000000-0000-4000-8000-000000000007"],
        "ServerStreamWriter": [b"00000000-0000-4000-8000-000000000007"],
        "Bidi": [b"00000000-0000-4000-8000-000000000007-a", b"00000000-0000-4000-8000-000000000007-b"],
    }


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer "),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer not-a-token"),),
        (("x-user-id", "00000000-0000-4000-8000-000000000007"),),
    ],
    ids=["missing", "empty", "blank", "basic", "garbage", "identity-header"],
)
async def test_every_call_shape_refuses_a_bad_or_missing_token(channel: grpc.aio.Channel, metadata: Any) -> None:
    results = await _call_every_shape(channel, metadata, refused=True)
    assert set(results.values()) == {grpc.StatusCode.UNAUTHENTICATED}, results


async def test_a_token_for_another_audience_is_refused(channel: grpc.aio.Channel) -> None:
    token = mint_worker_token(CONFIG, "worker-1").token
    results = await _call_every_shape(channel, (("authorization", f"Bearer {token}"),), refused=True)
    assert set(results.values()) == {grpc.StatusCode.UNAUTHENTICATED}


async def test_worker_audience_guard_accepts_worker_tokens_only() -> None:
    server = grpc.aio.server(interceptors=[AuthInterceptor(CONFIG, GUARDED, WORKER_AUDIENCE)])
    server.add_generic_rpc_handlers(_handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            bidi = chan.stream_stream(GUARDED + "Bidi")
            worker = mint_worker_token(CONFIG, "worker-1").token
            assert await _collect(bidi(_requests(), metadata=(("authorization", f"Bearer {worker}"),))) == [
                b"worker-1-a",
                b"worker-1-b",
            ]
            user = mint_user_token(CONFIG, "00000000-0000-4000-8000-000000000001").token
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _collect(bidi(_silent_requests(), metadata=(("authorization", f"Bearer {user}"),)))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)


async def test_other_services_pass_through_and_never_see_an_earlier_callers_identity(
    channel: grpc.aio.Channel,
) -> None:
    token = mint_user_token(CONFIG, "00000000-0000-4000-8000-000000000007").token
    auth = (("authorization", f"Bearer {token}"),)
    assert await channel.unary_unary(GUARDED + "Unary")(b"", metadata=auth) == b"00000000-0000-4000-8000-000000000007"
    assert await channel.unary_unary("/test.Open/Who")(b"") == b"nobody"
    assert await channel.unary_unary("/test.Open/Who")(b"", metadata=auth) == b"nobody"


def test_bearer_scheme_is_case_insensitive_and_exactly_one_header_counts() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "Bearer a b"),)) is None
    assert bearer_token((("authorization", "Bearer abc"), ("authorization", "Bearer abc"))) is None
    assert bearer_token(None) is None


def test_the_protected_prefix_must_name_a_whole_service() -> None:
    with pytest.raises(ValueError):
        AuthInterceptor(CONFIG, "/test.Guarded", CONFIG.audience)
