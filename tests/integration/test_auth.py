"""Sign up, log in, and bearer tokens: through Envoy, and straight at a gateway to prove it checks tokens itself."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import bcrypt
import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core.config import AuthConfig
from services.core.tokens import mint_user_token, mint_worker_token
from services.stack.stack import Stack
from tests.conftest import TEST_BCRYPT_COST, Stores, unique_email
from tests.integration.accounts import PASSWORD, signup

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
ISSUER, AUDIENCE, TTL_S = "resilienttask", "resilienttask-api", 3600
SCHEDULER = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"]


@pytest.fixture(params=["edge", "gateway"])
async def target(request: pytest.FixtureRequest, stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """Envoy, and one gateway directly (which must refuse bad tokens on its own)."""
    address = stack.edge_address if request.param == "edge" else stack.address(stack.names("gateway")[0])
    async with grpc.aio.insecure_channel(address) as channel:
        yield channel


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


def _call_every_scheduler_rpc(channel: grpc.aio.Channel, metadata: Any) -> dict[str, Any]:
    """One awaitable per SchedulerService method (streams are drained), each with an empty request."""
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    calls: dict[str, Any] = {}
    for method in SCHEDULER.methods:
        request = getattr(scheduler_pb2, method.input_type.name)()
        call = getattr(stub, method.name)(request, metadata=metadata, timeout=10)
        calls[method.name] = _drain(call) if method.server_streaming else call
    return calls


# -- signup and login -------------------------------------------------------------------------------------------


async def test_signup_returns_the_user_and_a_token_that_opens_the_scheduler(
    edge: grpc.aio.Channel, stack: Stack
) -> None:
    local = f"Mixed.Case-{uuid.uuid4().hex[:10]}"
    reply = await auth_pb2_grpc.AuthServiceStub(edge).Signup(
        auth_pb2.SignupRequest(email=f"  {local}@Example.COM \n", password=PASSWORD)
    )
    assert reply.user.email == f"{local.lower()}@example.com"
    assert str(uuid.UUID(reply.user.id)) == reply.user.id
    assert reply.user.created_at.seconds > 0
    claims = jwt.decode(reply.access_token, stack.jwt_secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert jwt.get_unverified_header(reply.access_token)["alg"] == "HS256"
    assert claims["sub"] == reply.user.id
    assert claims["exp"] - claims["iat"] == TTL_S
    assert claims["jti"]
    assert reply.expires_at.seconds == claims["exp"]
    stats = await scheduler_pb2_grpc.SchedulerServiceStub(edge).GetStats(
        scheduler_pb2.GetStatsRequest(), metadata=(("authorization", f"Bearer {reply.access_token}"),)
    )
    assert stats.stats.active == 0


async def test_login_normalizes_the_email_and_returns_a_fresh_token(edge: grpc.aio.Channel, stack: Stack) -> None:
    account = await signup(edge)
    reply = await auth_pb2_grpc.AuthServiceStub(edge).Login(
        auth_pb2.LoginRequest(email=f"  {account.email.upper()} ", password=PASSWORD)
    )
    assert (reply.user.id, reply.user.email) == (account.user_id, account.email)
    claims = jwt.decode(reply.access_token, stack.jwt_secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    first = jwt.decode(account.token, options={"verify_signature": False})
    assert claims["sub"] == account.user_id and claims["jti"] != first["jti"]
    assert reply.expires_at.seconds == claims["exp"]
    await scheduler_pb2_grpc.SchedulerServiceStub(edge).GetStats(
        scheduler_pb2.GetStatsRequest(), metadata=(("authorization", f"Bearer {reply.access_token}"),)
    )


async def test_a_taken_email_is_already_exists_in_any_case(edge: grpc.aio.Channel) -> None:
    account = await signup(edge)
    auth = auth_pb2_grpc.AuthServiceStub(edge)
    for email in (account.email, f" {account.email.upper()} "):
        error = await _rpc_error(auth.Signup(auth_pb2.SignupRequest(email=email, password="another password")))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error.details().startswith("email")


BAD_EMAILS = [
    "",
    "   ",
    "no-at-sign.example.com",
    "two@@example.com",
    "a@b@example.com",
    "@example.com",
    "user@",
    "user@localhost",
    "user@example..com",
    "user@-example.com",
    "user@example.123",
    ".user@example.com",
    "us..er@example.com",
    "us er@example.com",
    "us\u00e9r@example.com",
    "user@exa_mple.com",
    f"{'x' * 65}@example.com",
    f"user@{'a' * 64}.com",
    f"user@{'a' * 63}.{'b' * 63}.{'c' * 63}.{'d' * 63}.com",
]
BAD_PASSWORDS = ["", "seven77", "x" * 73, "\u00e9" * 37, "\U0001f511" * 19]


@pytest.mark.parametrize("method", ["Signup", "Login"])
@pytest.mark.parametrize("email", BAD_EMAILS)
async def test_bad_emails_are_invalid_argument_naming_the_field(
    edge: grpc.aio.Channel, method: str, email: str
) -> None:
    request = getattr(auth_pb2, f"{method}Request")(email=email, password=PASSWORD)
    error = await _rpc_error(getattr(auth_pb2_grpc.AuthServiceStub(edge), method)(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("email:")


@pytest.mark.parametrize("method", ["Signup", "Login"])
@pytest.mark.parametrize("password", BAD_PASSWORDS)
async def test_passwords_outside_8_to_72_bytes_are_invalid_argument_naming_the_field(
    edge: grpc.aio.Channel, method: str, password: str
) -> None:
    request = getattr(auth_pb2, f"{method}Request")(email=unique_email(), password=password)
    error = await _rpc_error(getattr(auth_pb2_grpc.AuthServiceStub(edge), method)(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("password:")


@pytest.mark.parametrize("password", ["x" * 8, "x" * 72, "\u00e9" * 36])
async def test_passwords_of_8_to_72_bytes_are_accepted(edge: grpc.aio.Channel, password: str) -> None:
    account = await signup(edge, password=password)
    reply = await auth_pb2_grpc.AuthServiceStub(edge).Login(
        auth_pb2.LoginRequest(email=account.email, password=password)
    )
    assert reply.user.id == account.user_id


async def test_login_failures_look_identical_for_unknown_email_and_wrong_password(edge: grpc.aio.Channel) -> None:
    account = await signup(edge)
    auth = auth_pb2_grpc.AuthServiceStub(edge)
    wrong_password = await _rpc_error(auth.Login(auth_pb2.LoginRequest(email=account.email, password=PASSWORD + "!")))
    unknown_email = await _rpc_error(auth.Login(auth_pb2.LoginRequest(email=unique_email(), password=PASSWORD)))
    assert wrong_password.code() == unknown_email.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_password.details() == unknown_email.details()
    assert dict(wrong_password.trailing_metadata() or ()).keys() == dict(unknown_email.trailing_metadata() or ()).keys()


async def test_the_stored_password_is_a_bcrypt_hash_never_returned(edge: grpc.aio.Channel, stores: Stores) -> None:
    reply = await auth_pb2_grpc.AuthServiceStub(edge).Signup(
        auth_pb2.SignupRequest(email=unique_email(), password=PASSWORD)
    )
    conn = await asyncpg.connect(stores.database_url)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", uuid.UUID(reply.user.id))
    finally:
        await conn.close()
    assert stored.startswith(f"$2b${TEST_BCRYPT_COST:02d}$") and len(stored) == 60
    assert PASSWORD not in stored
    assert bcrypt.checkpw(PASSWORD.encode(), stored.encode())
    serialized = reply.SerializeToString()
    assert stored.encode() not in serialized and b"$2b$" not in serialized
    assert PASSWORD.encode() not in serialized


async def test_neither_password_nor_hash_reaches_the_logs(edge: grpc.aio.Channel, stack: Stack, stores: Stores) -> None:
    password = f"log-probe-{uuid.uuid4().hex[:12]}"
    account = await signup(edge, password=password)
    await auth_pb2_grpc.AuthServiceStub(edge).Login(auth_pb2.LoginRequest(email=account.email, password=password))
    conn = await asyncpg.connect(stores.database_url)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE email = $1", account.email)
    finally:
        await conn.close()
    logs = "".join(path.read_text(errors="replace") for path in stack.log_dir.glob("*.log"))
    assert password not in logs
    assert stored not in logs


# -- tokens -------------------------------------------------------------------------------------------------------


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs(secret: bytes, algorithm: str = "HS256", **overrides: Any) -> str:
    with warnings.catch_warnings():  # PyJWT frowns on short keys for HS384/HS512; irrelevant to a refusal test
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(_claims(**overrides), secret, algorithm=algorithm)


def _alg_none(_: bytes) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


def _tampered(secret: bytes) -> str:
    header, _, signature = _hs(secret).split(".")
    return f"{header}.{_b64(json.dumps(_claims(sub=str(uuid.uuid4()))).encode())}.{signature}"


def _stripped_signature(secret: bytes) -> str:
    return _hs(secret).rsplit(".", 1)[0] + "."


def _missing_exp(secret: bytes) -> str:
    claims = _claims()
    del claims["exp"]
    return jwt.encode(claims, secret, algorithm="HS256")


def _worker_token(secret: bytes) -> str:
    return mint_worker_token(AuthConfig(jwt_secret=secret), "worker-x").token


NOW = int(time.time())
# Each builds an Authorization header value from the stack's secret.
BAD_TOKENS: dict[str, Callable[[bytes], str | None]] = {
    "missing": lambda secret: None,
    "empty-bearer": lambda secret: "Bearer ",
    "no-scheme": lambda secret: _hs(secret),
    "basic-scheme": lambda secret: "Basic dXNlcjpwYXNzd29yZA==",
    "garbage": lambda secret: "Bearer garbage",
    "two-segments": lambda secret: "Bearer abc.def",
    "alg-none": lambda secret: f"Bearer {_alg_none(secret)}",
    "hs384": lambda secret: f"Bearer {_hs(secret, 'HS384')}",
    "hs512": lambda secret: f"Bearer {_hs(secret, 'HS512')}",
    "wrong-key": lambda secret: f"Bearer {_hs(b'w' * 48)}",
    "expired-an-hour-ago": lambda secret: f"Bearer {_hs(secret, iat=NOW - 7200, exp=NOW - 3600)}",
    "wrong-issuer": lambda secret: f"Bearer {_hs(secret, iss='someone-else')}",
    "wrong-audience": lambda secret: f"Bearer {_hs(secret, aud='someone-else')}",
    "worker-audience": lambda secret: f"Bearer {_worker_token(secret)}",
    "tampered-payload": lambda secret: f"Bearer {_tampered(secret)}",
    "stripped-signature": lambda secret: f"Bearer {_stripped_signature(secret)}",
    "missing-exp": lambda secret: f"Bearer {_missing_exp(secret)}",
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_every_scheduler_rpc_refuses_a_bad_token(target: grpc.aio.Channel, stack: Stack, kind: str) -> None:
    header = BAD_TOKENS[kind](stack.jwt_secret)
    metadata = () if header is None else (("authorization", header),)
    calls = _call_every_scheduler_rpc(target, metadata)
    codes = {name: await _code(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, grpc.StatusCode.UNAUTHENTICATED)


async def test_a_gateway_refuses_a_token_expired_a_few_seconds_ago(stack: Stack) -> None:
    """Envoy allows 60 s of clock skew; the services allow none."""
    now = int(time.time())
    token = _hs(stack.jwt_secret, iat=now - 600, exp=now - 2)
    async with grpc.aio.insecure_channel(stack.address(stack.names("gateway")[0])) as channel:
        calls = _call_every_scheduler_rpc(channel, (("authorization", f"Bearer {token}"),))
        codes = {name: await _code(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, grpc.StatusCode.UNAUTHENTICATED)


async def test_identity_headers_sent_by_a_client_are_not_trusted(target: grpc.aio.Channel) -> None:
    metadata = (("x-user-id", str(uuid.uuid4())), ("x-jwt-payload", _b64(json.dumps(_claims()).encode())))
    calls = _call_every_scheduler_rpc(target, metadata)
    codes = {name: await _code(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, grpc.StatusCode.UNAUTHENTICATED)


async def test_a_valid_token_reaches_the_handlers_unary_and_streaming(target: grpc.aio.Channel, stack: Stack) -> None:
    account = await signup(target)
    stub = scheduler_pb2_grpc.SchedulerServiceStub(target)
    stats = await stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=account.metadata)
    assert stats.stats.active == 0
    listed = await stub.ListTasks(scheduler_pb2.ListTasksRequest(), metadata=account.metadata)
    assert list(listed.tasks) == []
    minted = mint_user_token(AuthConfig(jwt_secret=stack.jwt_secret), account.user_id).token
    await stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=(("authorization", f"Bearer {minted}"),))


async def test_auth_health_and_reflection_need_no_token(target: grpc.aio.Channel, stack: Stack) -> None:
    await signup(target)
    health = await health_pb2_grpc.HealthStub(target).Check(health_pb2.HealthCheckRequest(service=SCHEDULER.full_name))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    gateway = stack.address(stack.names("gateway")[0])
    grpcurl = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", gateway, "list", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await grpcurl.communicate()
    assert grpcurl.returncode == 0, err
    assert SCHEDULER.full_name in out.decode().split()


async def test_the_scheduler_accepts_worker_tokens_only(stack: Stack) -> None:
    """WorkerService has its own key and audience: no token, user tokens and worker-audience tokens signed with
    the user key are refused; a token signed with the worker key is let through."""
    config = AuthConfig(jwt_secret=stack.jwt_secret)
    user = mint_user_token(config, str(uuid.uuid4())).token
    user_key_worker = mint_worker_token(config, "worker-auth-test").token  # what a gateway's key could sign
    worker = mint_worker_token(stack.worker_keys(), "worker-auth-test").token
    async with grpc.aio.insecure_channel(stack.address(stack.names("scheduler")[0])) as channel:
        connect = worker_pb2_grpc.WorkerServiceStub(channel).Connect
        hello = worker_pb2.ConnectRequest(hello=worker_pb2.WorkerHello(worker_id="worker-auth-test", slots=1))

        async def code(metadata: tuple[tuple[str, str], ...] = (), *, say_hello: bool = True) -> grpc.StatusCode:
            call = connect(iter([hello] if say_hello else []), metadata=metadata)
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        # A refused call sends no message: the token is checked on the call's metadata alone, and a grpc.aio
        # client whose write loses the race with the server's early status reports INTERNAL instead of that
        # status (grpc/grpc#36066), which is the client library's doing, not the scheduler's.
        for refused in ((), (("authorization", f"Bearer {user}"),), (("authorization", f"Bearer {user_key_worker}"),)):
            assert await code(refused, say_hello=False) == grpc.StatusCode.UNAUTHENTICATED
        assert await code((("authorization", f"Bearer {worker}"),)) != grpc.StatusCode.UNAUTHENTICATED
