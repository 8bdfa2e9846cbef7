"""Login and signup protection on the real stack, through Envoy: per client address, per email, hash queue.

Clients on different machines are played by loopback addresses: grpcio cannot choose a channel's source
address, so each client's channel goes through a TCP proxy whose upstream connections leave from
127.0.0.2 or 127.0.0.3, and Envoy sees that address as the peer. Each test starts an edge of its own
(and, for the gateway's limits, a gateway of its own) with small limits; the session's stack runs with
open ones (tests/limits.py).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import pytest

from resilienttask.v1 import auth_pb2, auth_pb2_grpc
from services.edge.config import AuthLimits, Endpoint, RateLimit
from services.stack.ports import free_port
from services.stack.processes import ManagedProcess
from services.stack.stack import Stack, wait_serving
from tests.conftest import unique_email
from tests.integration.accounts import PASSWORD, Account, signup
from tests.integration.test_edge import Edge, private_edge
from tests.limits import OPEN_AUTH_LIMITS
from tests.tcp_proxy import TcpProxy

HAMMER = "127.0.0.2"
NEIGHBOUR = "127.0.0.3"
WRONG = "wrong password!"
CALL_TIMEOUT_S = 30
ENVOY_REFUSAL = "too many requests, retry later"  # services/edge/filters.py, the 429 mapping
EMAIL_REFUSAL = "too many failed logins for this email"
QUEUE_REFUSAL = "password hashing queue full"


def _once_an_hour(tokens: int) -> RateLimit:
    return RateLimit(max_tokens=tokens, tokens_per_fill=1, fill_interval_s=3600)


@asynccontextmanager
async def client_at(source: str, edge: Edge) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    """An AuthService stub whose connections reach the edge from the loopback address `source`."""
    proxy = TcpProxy("127.0.0.1", edge.config.listen_port, source_host=source)
    await proxy.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            yield auth_pb2_grpc.AuthServiceStub(channel)
    finally:
        await proxy.cut()


async def login_code(
    auth: auth_pb2_grpc.AuthServiceStub, email: str, password: str, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, str]:
    try:
        request = auth_pb2.LoginRequest(email=email, password=password)
        await auth.Login(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def signup_code(auth: auth_pb2_grpc.AuthServiceStub, email: str) -> grpc.StatusCode:
    try:
        await auth.Signup(auth_pb2.SignupRequest(email=email, password=PASSWORD), timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@contextmanager
def private_gateway(stack: Stack, folder: Path, **env: str) -> Iterator[Endpoint]:
    """A gateway process of our own (same stores and secret as the stack), its limits set through its env."""
    port = free_port()
    name = f"gateway-{folder.name}"
    environment = {**stack.service_env(port), "RTASK_INSTANCE": name, **env}
    argv = [sys.executable, "-m", "services.gateway.main"]
    process = ManagedProcess(name, argv, log_dir=folder / "logs", env=environment)
    process.start()
    try:
        wait_serving(f"127.0.0.1:{port}", timeout_s=60)
        yield Endpoint("127.0.0.1", port)
    finally:
        process.stop(grace_s=5)


@pytest.fixture
async def member(edge: grpc.aio.Channel) -> Account:
    """A registered user (signed up through the session's edge)."""
    return await signup(edge, "member")


# -- per client address (Envoy) --------------------------------------------------------------------


async def test_one_client_hammering_login_does_not_stop_another(stack: Stack, tmp_path: Path, member: Account) -> None:
    limits = AuthLimits(login_per_address=_once_an_hour(3), signup_per_address=_once_an_hour(3))
    with private_edge(stack, tmp_path / "edge", auth_limits=limits) as edge:
        async with client_at(HAMMER, edge) as hammer, client_at(NEIGHBOUR, edge) as neighbour:
            codes = [await login_code(hammer, unique_email("hammer"), WRONG) for _ in range(8)]
            assert [code for code, _ in codes] == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [
                grpc.StatusCode.RESOURCE_EXHAUSTED
            ] * 5
            assert codes[-1][1] == ENVOY_REFUSAL
            # Another address still logs in: the hammer emptied its own bucket only.
            assert await login_code(neighbour, member.email, member.password) == (grpc.StatusCode.OK, "")
            # Signups have buckets of their own: the hammer's logins did not use them up.
            assert await signup_code(hammer, unique_email("hammer")) == grpc.StatusCode.OK


async def test_a_client_cannot_pick_its_address_with_forwarding_headers(
    stack: Stack, tmp_path: Path, member: Account
) -> None:
    limits = AuthLimits(login_per_address=_once_an_hour(2))
    with private_edge(stack, tmp_path / "edge", auth_limits=limits) as edge:
        async with client_at(HAMMER, edge) as hammer, client_at(NEIGHBOUR, edge) as neighbour:
            for _ in range(2):
                assert (await login_code(hammer, unique_email("spoof"), WRONG))[0] == grpc.StatusCode.UNAUTHENTICATED
            # Headers naming another client (the neighbour, or a fresh address) do not give the hammer a new bucket.
            for claimed in (NEIGHBOUR, "203.0.113.7"):
                spoofed = (("x-forwarded-for", claimed), ("x-envoy-external-address", claimed), ("x-real-ip", claimed))
                refused = await login_code(hammer, member.email, member.password, spoofed)
                assert refused == (grpc.StatusCode.RESOURCE_EXHAUSTED, ENVOY_REFUSAL), claimed
            # Nor did they spend the neighbour's.
            for _ in range(2):
                assert await login_code(neighbour, member.email, member.password) == (grpc.StatusCode.OK, "")


async def test_signups_are_limited_per_client_address(stack: Stack, tmp_path: Path, member: Account) -> None:
    limits = AuthLimits(signup_per_address=_once_an_hour(2))
    with private_edge(stack, tmp_path / "edge", auth_limits=limits) as edge:
        async with client_at(HAMMER, edge) as prober, client_at(NEIGHBOUR, edge) as neighbour:
            # A probe of a registered email answers ALREADY_EXISTS, and costs the address like any signup.
            assert await signup_code(prober, member.email) == grpc.StatusCode.ALREADY_EXISTS
            assert await signup_code(prober, unique_email("probe")) == grpc.StatusCode.OK
            assert await signup_code(prober, member.email) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await signup_code(prober, unique_email("probe")) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await signup_code(neighbour, unique_email("neighbour")) == grpc.StatusCode.OK
            # Logging in is not signing up: the prober's logins are untouched.
            assert await login_code(prober, member.email, member.password) == (grpc.StatusCode.OK, "")


# -- per email (the gateway) -----------------------------------------------------------------------


async def test_hammering_one_email_does_not_block_another_from_the_same_address(
    stack: Stack, tmp_path: Path, edge: grpc.aio.Channel
) -> None:
    victim, other = await signup(edge, "victim"), await signup(edge, "other")
    email_limits = {"RTASK_LOGIN_EMAIL_FAILURES_BURST": "3", "RTASK_LOGIN_EMAIL_FAILURE_REFILL_MS": "3600000"}
    # The address may make 7 calls: enough for the email's limit to show first, then its own.
    limits = AuthLimits(login_per_address=_once_an_hour(7))
    with (
        private_gateway(stack, tmp_path / "gateway", **email_limits) as gateway,
        private_edge(stack, tmp_path / "edge", gateways=[gateway], auth_limits=limits) as own_edge,
    ):
        async with client_at(HAMMER, own_edge) as client:
            for _ in range(3):
                assert (await login_code(client, victim.email, WRONG))[0] == grpc.StatusCode.UNAUTHENTICATED
            code, message = await login_code(client, victim.email, WRONG)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith(EMAIL_REFUSAL), message
            # The email is closed to every password until it refills (the price of a per-email limit).
            code, message = await login_code(client, victim.email, victim.password)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith(EMAIL_REFUSAL), message
            # Another email from the same address logs in, repeatedly: successes cost its email nothing...
            for _ in range(2):
                assert await login_code(client, other.email, other.password) == (grpc.StatusCode.OK, "")
            # ...but the address's own limit still holds.
            assert await login_code(client, other.email, other.password) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                ENVOY_REFUSAL,
            )


# -- the hash queue (the gateway) ------------------------------------------------------------------


async def test_a_full_hash_queue_fails_fast_with_resource_exhausted(stack: Stack, tmp_path: Path) -> None:
    # One hashing thread, one place in line, and a cost at which one hash takes a second or more.
    slow = {"RTASK_BCRYPT_COST": "14", "RTASK_HASH_THREADS": "1", "RTASK_HASH_QUEUE_MAX": "1"}
    with (
        private_gateway(stack, tmp_path / "gateway", **slow) as gateway,
        private_edge(stack, tmp_path / "edge", gateways=[gateway], auth_limits=OPEN_AUTH_LIMITS) as own_edge,
    ):
        async with grpc.aio.insecure_channel(own_edge.address) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            answered: list[tuple[grpc.StatusCode, str]] = []

            async def attempt() -> None:
                answered.append(await login_code(auth, unique_email("queued"), WRONG))

            await asyncio.gather(*(attempt() for _ in range(6)))
    codes = [code for code, _ in answered]
    # One hashed, one waited, four refused...
    assert Counter(codes) == {grpc.StatusCode.UNAUTHENTICATED: 2, grpc.StatusCode.RESOURCE_EXHAUSTED: 4}, answered
    refusals = [message for code, message in answered if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert all(message.startswith(QUEUE_REFUSAL) for message in refusals), refusals
    # ...at once: every refusal came back before the first hash was done.
    assert codes[:4] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4, answered
