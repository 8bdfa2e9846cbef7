"""The security matrix, where tests/integration/test_auth.py and test_ownership.py leave gaps:
WorkerService against every kind of bad token at the scheduler (the edge does not route it at all:
tests/integration/test_edge_boundary.py), AuthService untouched by a bad token,
SQL metacharacters stored and returned verbatim, only bcrypt hashes in the users table, and no token,
secret or password anywhere in the logs.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core.config import AuthConfig
from services.core.tokens import mint_user_token, mint_worker_token
from services.stack.stack import Stack
from tests.chaos.hostile import SQL_METACHARACTERS
from tests.conftest import Stores, unique_email
from tests.integration.test_auth import BAD_TOKENS

WORKER = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"]
BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
SQL_PASSWORD = "p' OR '1'='1'; --"


@pytest.fixture(scope="module")
def channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.edge_address) as opened:
        yield opened


@pytest.fixture(scope="module")
def scheduler_channel(stack: Stack) -> Iterator[grpc.Channel]:
    """Where workers connect: a scheduler's own port (never published)."""
    with grpc.insecure_channel(stack.address(stack.names("scheduler")[0])) as opened:
        yield opened


def _code(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def _every_worker_rpc(channel: grpc.Channel, metadata: Any, worker_id: str = "matrix-probe") -> dict[str, Any]:
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    hello = worker_pb2.ConnectRequest(hello=worker_pb2.WorkerHello(worker_id=worker_id, slots=1, kinds=["sleep"]))
    return {
        "Connect": lambda: list(stub.Connect(iter([hello]), metadata=metadata, timeout=10)),
        "Enrol": lambda: stub.Enrol(worker_pb2.EnrolRequest(worker_id=worker_id), metadata=metadata, timeout=10),
    }


# A worker token (signed with the worker key) is the one thing WorkerService accepts: every bad token of test_auth
# (a worker-audience token signed with the user key among them), and a user token, are refused.
@pytest.mark.parametrize("kind", [*BAD_TOKENS, "user-token"])
def test_every_worker_rpc_refuses_anything_but_a_worker_token(
    scheduler_channel: grpc.Channel, stack: Stack, kind: str
) -> None:
    if kind == "user-token":
        header: str | None = (
            f"Bearer {mint_user_token(AuthConfig(jwt_secret=stack.jwt_secret), str(uuid.uuid4())).token}"
        )
    else:
        header = BAD_TOKENS[kind](stack.jwt_secret)
    metadata = () if header is None else (("authorization", header),)
    calls = _every_worker_rpc(scheduler_channel, metadata)
    assert {m.name for m in WORKER.methods} == set(calls)
    codes = {name: _code(call) for name, call in calls.items()}
    assert set(codes.values()) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}, codes


def test_a_worker_token_is_let_through_by_the_scheduler_but_not_by_envoy(
    channel: grpc.Channel, scheduler_channel: grpc.Channel, stack: Stack
) -> None:
    worker_id = f"matrix-probe-{uuid.uuid4().hex[:8]}"
    enrolled = worker_pb2_grpc.WorkerServiceStub(scheduler_channel).Enrol(
        worker_pb2.EnrolRequest(worker_id=worker_id),
        metadata=(("authorization", f"Bearer {stack.enrolment_secret.decode()}"),),
        timeout=10,
    )
    metadata = (("authorization", f"Bearer {enrolled.token}"),)
    codes = {name: _code(call) for name, call in _every_worker_rpc(scheduler_channel, metadata, worker_id).items()}
    assert codes == dict.fromkeys(codes, grpc.StatusCode.OK)
    at_the_edge = {name: _code(call) for name, call in _every_worker_rpc(channel, metadata, worker_id).items()}
    assert at_the_edge == dict.fromkeys(at_the_edge, grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize("kind", ["garbage", "alg-none", "wrong-key", "expired-an-hour-ago"])
def test_auth_service_ignores_a_bad_token_it_does_not_need(channel: grpc.Channel, stack: Stack, kind: str) -> None:
    header = BAD_TOKENS[kind](stack.jwt_secret)
    assert header is not None
    reply = auth_pb2_grpc.AuthServiceStub(channel).Signup(
        auth_pb2.SignupRequest(email=unique_email("matrix"), password=SQL_PASSWORD),
        metadata=(("authorization", header),),
    )
    assert reply.access_token


def test_sql_metacharacters_are_stored_and_returned_verbatim(channel: grpc.Channel) -> None:
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    email = unique_email("o'brien")
    signed_up = auth.Signup(auth_pb2.SignupRequest(email=email, password=SQL_PASSWORD))
    logged_in = auth.Login(auth_pb2.LoginRequest(email=email, password=SQL_PASSWORD))
    assert logged_in.user.id == signed_up.user.id and logged_in.user.email == email
    wrong = _code(lambda: auth.Login(auth_pb2.LoginRequest(email=email, password="' OR '1'='1")))
    assert wrong == grpc.StatusCode.UNAUTHENTICATED

    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    metadata = (("authorization", f"Bearer {logged_in.access_token}"),)
    submitted = {}
    for text in SQL_METACHARACTERS:
        request = scheduler_pb2.SubmitTaskRequest(name=text, kind="sleep", request_id=text)
        request.payload.update({text: text, "nested": {"list": [text]}})
        (task,) = stub.SubmitTask(request, metadata=metadata).tasks
        submitted[task.id] = text
        again = stub.SubmitTask(request, metadata=metadata).tasks
        assert [t.id for t in again] == [task.id], "the request_id found the same task"
    listed = {t.id: t for t in stub.ListTasks(scheduler_pb2.ListTasksRequest(page_size=100), metadata=metadata).tasks}
    assert set(listed) == set(submitted), "nothing more, nothing less: no statement was altered"
    for task_id, text in submitted.items():
        task = stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), metadata=metadata).task
        for returned in (task, listed[task_id]):
            assert (returned.name, returned.request_id) == (text, text)
            assert json_format.MessageToDict(returned.payload) == {text: text, "nested": {"list": [text]}}


async def test_the_users_table_holds_only_bcrypt_hashes(stores: Stores, channel: grpc.Channel) -> None:
    auth_pb2_grpc.AuthServiceStub(channel).Signup(auth_pb2.SignupRequest(email=unique_email(), password=SQL_PASSWORD))
    conn = await asyncpg.connect(stores.database_url)
    try:
        # Every account made through AuthService (unique_email's domain); fixtures elsewhere insert raw rows.
        rows = await conn.fetch("SELECT email, password_hash FROM users WHERE email LIKE '%@example.com'")
    finally:
        await conn.close()
    assert rows
    not_bcrypt = [r["email"] for r in rows if not BCRYPT.match(r["password_hash"])]
    assert not_bcrypt == []
    assert all(SQL_PASSWORD not in r["password_hash"] for r in rows)


def test_no_secret_or_token_reaches_the_logs(channel: grpc.Channel, stack: Stack) -> None:
    reply = auth_pb2_grpc.AuthServiceStub(channel).Signup(
        auth_pb2.SignupRequest(email=unique_email("logs"), password=SQL_PASSWORD)
    )
    metadata = (("authorization", f"Bearer {reply.access_token}"),)
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=metadata)
    _code(lambda: stub.GetTask(scheduler_pb2.GetTaskRequest(task_id="not-a-uuid"), metadata=metadata))
    worker_token = mint_worker_token(stack.worker_keys(), "matrix-probe").token
    secrets = {
        "the JWT secret": stack.jwt_secret.decode(),
        "the worker key": stack.worker_key.decode(),
        "the enrolment secret": stack.enrolment_secret.decode(),
        "a user's token": reply.access_token,
        "a token's signature": reply.access_token.rsplit(".", 1)[1],
        "a worker token's signature": worker_token.rsplit(".", 1)[1],
        "a password": SQL_PASSWORD,
    }
    found = [
        f"{label} in {path.name}"
        for path in sorted(stack.log_dir.glob("*.log"))
        for label, value in secrets.items()
        if value in path.read_text(errors="replace")
    ]
    assert found == []
