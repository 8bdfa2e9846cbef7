"""What a client is told when PostgreSQL goes away or changes primary, on a real in-process grpc.aio server.

The errors are those a failover raises in asyncpg (docs/postgresql-ha.md): each must be UNAVAILABLE, which Envoy and
the SDK retry, never INTERNAL; and the DATABASE_URL settings that come with a pooler are read from the environment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from services.core.config import ConfigError, DatabaseConfig
from services.core.errors import translate_errors
from services.core.settings import load

FAILOVER_ERRORS: dict[str, BaseException] = {
    # The primary's port closed: the pool's next connection attempt is refused.
    "refused": ConnectionRefusedError(111, "Connect call failed"),
    # The session was cut mid-statement.
    "cut": asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    # The postmaster died: its backends end their sessions with this FATAL error.
    "postmaster died": asyncpg.AdminShutdownError("terminating connection due to unexpected postmaster exit"),
    "starting": asyncpg.CannotConnectNowError("the database system is starting up"),
    # A multi-host URL mid-failover: every listed server answers, none accepts writes yet.
    "no primary yet": asyncpg.TargetServerAttributeNotMatched("None of the hosts match 'read-write'"),
    # A pooled connection handed out between the FATAL error and its socket's close.
    "half-closed": asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    # A write that reached a server which is a standby now.
    "standby": asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
}


class _Failing:
    @translate_errors
    async def Call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise FAILOVER_ERRORS[request.decode()]


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    servicer = _Failing()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Db", {"Call": grpc.unary_unary_rpc_method_handler(servicer.Call)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        await server.stop(0)


@pytest.mark.parametrize("case", sorted(FAILOVER_ERRORS))
async def test_a_failover_error_is_answered_unavailable(channel: grpc.aio.Channel, case: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Db/Call")(case.encode())
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE, raised.value.details()


def test_pooler_settings_come_from_the_environment() -> None:
    url = "postgresql://rtask@pg-a:5432,pg-b:5432/rtask?target_session_attrs=read-write"
    direct = "postgresql://rtask@pg-a:5432/rtask"
    env = {"DATABASE_URL": url, "DATABASE_DIRECT_URL": direct, "RTASK_DB_STATEMENT_CACHE_SIZE": "0"}
    config = load(DatabaseConfig, env)
    assert (config.url, config.direct_url, config.statement_cache_size) == (url, direct, 0)
    defaults = load(DatabaseConfig, {"DATABASE_URL": url})
    assert (defaults.direct_url, defaults.statement_cache_size) == ("", 100)
    with pytest.raises(ConfigError, match="RTASK_DB_STATEMENT_CACHE_SIZE"):
        load(DatabaseConfig, {"DATABASE_URL": url, "RTASK_DB_STATEMENT_CACHE_SIZE": "-1"})
