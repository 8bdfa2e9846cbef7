"""Worker identity and handler isolation, tried as a hostile worker or handler would.

On the session stack: which process holds which secret, what a worker's credentials open, and what a
handler process can see. On a private scheduler (no live worker competes for its entries): enrolment, and
worker A trying to act on worker B's task: finish it, report its progress, take it over while B lives,
hear its commands, speak under its id; and the bounds on what one worker stream may send.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from resilienttask.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core import commands, outbox, task_store
from services.core.config import AuthConfig
from services.core.tokens import IssuedToken, mint_user_token, mint_worker_token
from services.core.transitions import user as transitions
from services.stack.stack import Stack
from services.worker.connection import WorkerTokens, WorkRefused
from tests.helpers import eventually
from tests.integration import probe_handler
from tests.integration.accounts import signup
from tests.integration.private_scheduler import (
    ENROLMENT,
    HOLDER_SILENT_MS,
    WORKER_KEYS,
    Isolated,
    isolated,
    metadata,
    submit,
)

__all__ = ["isolated"]  # the fixture, used by name

RUN = worker_pb2.START_DECISION_RUN
DEFER = worker_pb2.START_DECISION_DEFER


def bearer(credential: str | bytes) -> tuple[tuple[str, str]]:
    text = credential.decode() if isinstance(credential, bytes) else credential
    return (("authorization", f"Bearer {text}"),)


# -- which process holds which secret (session stack) ------------------------------------------------------
def test_each_process_holds_only_the_secrets_of_its_role(stack: Stack) -> None:
    assert len({stack.jwt_secret, stack.worker_key, stack.enrolment_secret}) == 3, "three distinct secrets"
    user_key_vars = {"RTASK_JWT_SECRET", "RTASK_JWT_SECRET_FILE"}
    worker_key_vars = {"RTASK_WORKER_KEY", "RTASK_WORKER_KEY_FILE"}
    for name in stack.names("worker"):
        env = stack.processes[name].env
        assert not (user_key_vars | worker_key_vars | {"DATABASE_URL"}) & set(env), name
        assert Path(env["RTASK_WORKER_ENROLMENT_SECRET_FILE"]).read_bytes().strip() == stack.enrolment_secret
    for name in stack.names("gateway"):
        env = stack.processes[name].env
        assert not (worker_key_vars | {"RTASK_WORKER_ENROLMENT_SECRET_FILE"}) & set(env), name
    for name in stack.names("scheduler"):
        env = stack.processes[name].env
        assert not user_key_vars & set(env), name
        assert Path(env["RTASK_WORKER_KEY_FILE"]).read_bytes().strip() == stack.worker_key
    for path in (stack.secret_file, stack.worker_key_file, stack.enrolment_file):
        assert path.stat().st_mode & 0o777 == 0o600, path


async def test_a_workers_credentials_open_no_user_call(stack: Stack, edge: grpc.aio.Channel) -> None:
    """The worker's token, its enrolment secret, and a user token signed with the only key a worker holds
    are all refused by SchedulerService, at Envoy and at a gateway directly."""
    account = await signup(edge, "worker-creds")
    async with grpc.aio.insecure_channel(stack.address(stack.names("scheduler")[0])) as scheduler:
        issued = await worker_pb2_grpc.WorkerServiceStub(scheduler).Enrol(
            worker_pb2.EnrolRequest(worker_id=f"probe-{uuid.uuid4().hex[:8]}"), metadata=bearer(stack.enrolment_secret)
        )
    forged = mint_user_token(AuthConfig(jwt_secret=stack.enrolment_secret), account.user_id).token
    credentials = {"worker token": issued.token, "enrolment secret": stack.enrolment_secret.decode(), "forged": forged}
    async with grpc.aio.insecure_channel(stack.address(stack.names("gateway")[0])) as gateway:
        for target, channel in (("envoy", edge), ("gateway", gateway)):
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            assert await stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=account.metadata)
            for label, credential in credentials.items():
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.GetStats(scheduler_pb2.GetStatsRequest(), metadata=bearer(credential))
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, f"{label} at {target}"


# -- what a handler process sees (session stack) -----------------------------------------------------------
async def test_a_handler_process_sees_no_secret_and_cannot_read_one(stack: Stack, edge: grpc.aio.Channel) -> None:
    account = await signup(edge, "probe")
    stub = scheduler_pb2_grpc.SchedulerServiceStub(edge)
    redis_logins = [stack.redis_env(role) for role in ("services", "worker")]
    password_files = [
        login["RTASK_REDIS_PASSWORD_FILE"] for login in redis_logins if "RTASK_REDIS_PASSWORD_FILE" in login
    ]
    secret_files = [str(p) for p in (stack.secret_file, stack.worker_key_file, stack.enrolment_file)] + password_files
    request = scheduler_pb2.SubmitTaskRequest(name="probe", kind=probe_handler.KIND)
    request.payload.update({"paths": secret_files})
    (task,) = (await stub.SubmitTask(request, metadata=account.metadata)).tasks

    async def finished() -> task_pb2.Task | None:
        current = (await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id), metadata=account.metadata)).task
        return current if current.status == task_pb2.TASK_STATUS_SUCCEEDED else None

    seen = json_format.MessageToDict((await eventually(finished, timeout_s=30, message="the probe ran")).result)
    environment: dict[str, str] = seen["environment"]
    leaked = [
        k
        for k in environment
        if any(word in k for word in ("SECRET", "KEY", "PASSWORD", "TOKEN")) or k in ("REDIS_URL", "DATABASE_URL")
    ]
    assert leaked == [], f"the handler saw {leaked}"
    addresses = [stack.database_url, *(login["REDIS_URL"] for login in redis_logins)]
    assert not [v for v in environment.values() if any(address in v for address in addresses)]
    assert seen["sockets"] == [], "no socket of the worker is inherited"
    if os.geteuid() != 0:
        pytest.skip("the files are kept from handlers by a separate uid, which only a worker running as root has")
    # The worker runs as root (as in CI): the handler runs as another, unprivileged user.
    assert seen["uid"] != 0 and seen["euid"] != 0 and seen["groups"] == []
    assert seen["files"] == dict.fromkeys(secret_files, "PermissionError")
    assert seen["worker_environment"] == "PermissionError"


# -- enrolment (private scheduler) -------------------------------------------------------------------------
async def test_enrolment_gives_each_id_once_and_renews_only_its_own(isolated: Isolated) -> None:
    enrol = isolated.stub.Enrol
    first = await enrol(worker_pb2.EnrolRequest(worker_id="worker-a"), metadata=bearer(ENROLMENT.secret))
    assert first.worker_id == "worker-a" and first.token and first.expires_at.seconds > time.time()
    refusals = {
        "id taken": (worker_pb2.EnrolRequest(worker_id="worker-a"), bearer(ENROLMENT.secret)),
        "no credential": (worker_pb2.EnrolRequest(worker_id="worker-x"), ()),
        "wrong secret": (worker_pb2.EnrolRequest(worker_id="worker-x"), bearer("n" * 48)),
        "bad id": (worker_pb2.EnrolRequest(worker_id="bad id\n"), bearer(ENROLMENT.secret)),
        "another's renewal": (worker_pb2.EnrolRequest(worker_id="worker-b"), bearer(first.token)),
        "never enrolled": (worker_pb2.EnrolRequest(worker_id="worker-c"), metadata("worker-c")),
    }
    codes = {}
    for label, (request, credential) in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await enrol(request, metadata=credential)
        codes[label] = refused.value.code()
    assert codes == {
        "id taken": grpc.StatusCode.ALREADY_EXISTS,
        "no credential": grpc.StatusCode.UNAUTHENTICATED,
        "wrong secret": grpc.StatusCode.UNAUTHENTICATED,
        "bad id": grpc.StatusCode.INVALID_ARGUMENT,
        "another's renewal": grpc.StatusCode.UNAUTHENTICATED,
        "never enrolled": grpc.StatusCode.UNAUTHENTICATED,
    }
    renewed = await enrol(worker_pb2.EnrolRequest(worker_id="worker-a"), metadata=bearer(first.token))
    assert renewed.worker_id == "worker-a" and renewed.token != first.token


async def test_a_worker_whose_token_expired_during_an_outage_renews_its_own_id(isolated: Isolated) -> None:
    """Renewal needs a scheduler and the database: an outage longer than the token's life must not lock the
    worker out of its id for good (enrolling the id again is refused, as it must be)."""
    enrol = isolated.stub.Enrol
    await enrol(worker_pb2.EnrolRequest(worker_id="worker-late"), metadata=bearer(ENROLMENT.secret))
    expired = mint_worker_token(WORKER_KEYS, "worker-late", ttl_s=-60)
    renewed = await enrol(worker_pb2.EnrolRequest(worker_id="worker-late"), metadata=bearer(expired.token))
    assert renewed.worker_id == "worker-late" and renewed.expires_at.seconds > time.time()
    # Still only its own id, and only an id that is enrolled; a token expired beyond an id's life is refused.
    refusals = {
        "another's id": ("worker-other", expired.token),
        "never enrolled": ("worker-never", mint_worker_token(WORKER_KEYS, "worker-never", ttl_s=-60).token),
        "expired too long ago": (
            "worker-late",
            mint_worker_token(WORKER_KEYS, "worker-late", ttl_s=-40 * 86_400).token,
        ),
    }
    for label, (worker_id, token) in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await enrol(worker_pb2.EnrolRequest(worker_id=worker_id), metadata=bearer(token))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, label
    # The worker's side: holding an expired token, its next call renews instead of asking to enrol again.
    tokens = WorkerTokens(ENROLMENT, "worker-late")
    tokens._token = IssuedToken(expired.token, expired.expires_at)  # as left by an outage
    ((_, header),) = await tokens.metadata(isolated.stub)
    assert header.startswith("Bearer ") and header != f"Bearer {expired.token}"


# -- one worker against another's task (private scheduler) --------------------------------------------------
class RawStream:
    """A Connect stream written message by message, as a hostile worker would."""

    def __init__(self, iso: Isolated, hello_id: str, token_id: str | None = None, slots: int = 10) -> None:
        self.requests: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        self.requests.put_nowait(
            worker_pb2.ConnectRequest(hello=worker_pb2.WorkerHello(worker_id=hello_id, slots=slots, kinds=["sleep"]))
        )
        self.call = iso.stub.Connect(self._outgoing(), metadata=metadata(token_id or hello_id))
        self._sequence = 0

    async def _outgoing(self) -> AsyncIterator[worker_pb2.ConnectRequest]:
        while (message := await self.requests.get()) is not None:
            yield message

    def send(self, **kind: object) -> None:
        self.requests.put_nowait(worker_pb2.ConnectRequest(**kind))  # type: ignore[arg-type]

    def heartbeat(self, *held: worker_pb2.HeldTask) -> None:
        self._sequence += 1
        self.send(heartbeat=worker_pb2.WorkerHeartbeat(tasks=held, sequence=self._sequence))

    async def read_until_cancels(self) -> list[worker_pb2.CancelCommand]:
        while not (message := await asyncio.wait_for(self.call.read(), 10)).cancels:
            pass
        return list(message.cancels)

    async def status(self) -> grpc.StatusCode:
        """How the stream ended (read to its end)."""
        try:
            while await asyncio.wait_for(self.call.read(), 10) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()


def item(row: asyncpg.Record) -> worker_pb2.StartItem:
    return worker_pb2.StartItem(task_id=str(row["id"]), dispatch_id=str(row["dispatch_id"]), entry_id=row["entry_id"])


async def _task(iso: Isolated, task_id: str) -> asyncpg.Record:
    row = await task_store.get(iso.pool, iso.owner, task_id)
    assert row is not None
    return row


async def test_worker_a_cannot_finish_or_report_progress_on_worker_bs_task(isolated: Isolated) -> None:
    theirs, mine = await submit(isolated, replicas=2, workload_ms=600_000)
    b, a = await isolated.link("worker-b"), await isolated.link("worker-a")
    (run_b,) = await b.start_tasks([item(theirs)])
    (run_a,) = await a.start_tasks([item(mine)])
    held_b = worker_pb2.HeldTask(task_id=str(theirs["id"]), fence=run_b.fence)
    # A names B's task with B's very fence: refused as if the fence were stale, and nothing changes.
    for outcome in (worker_pb2.OUTCOME_SUCCEEDED, worker_pb2.OUTCOME_FAILED, worker_pb2.OUTCOME_CANCELLED):
        (result,) = await a.finish_tasks([worker_pb2.FinishItem(task=held_b, outcome=outcome, error="forged")])
        assert not result.accepted and result.reason == "superseded"
        assert result.verdict == worker_pb2.FINISH_VERDICT_SUPERSEDED
    # A's report on B's task goes up first, then one on its own task: once A's own is recorded, the one before
    # it was flushed too (same or earlier batch), and B's task must not have moved.
    await a.send(worker_pb2.ConnectRequest(progress=worker_pb2.ProgressReport(task=held_b, progress=0.9)))
    held_a = worker_pb2.HeldTask(task_id=str(mine["id"]), fence=run_a.fence)
    await a.send(worker_pb2.ConnectRequest(progress=worker_pb2.ProgressReport(task=held_a, progress=0.5)))

    async def own_recorded() -> bool:
        return (await _task(isolated, str(mine["id"])))["progress"] == 0.5

    await eventually(own_recorded, message="A's progress on its own task")
    after = await _task(isolated, str(theirs["id"]))
    assert after["status"] == task_pb2.TASK_STATUS_RUNNING and after["progress"] == 0
    assert after["attempt"] == 1 and after["worker_id"] == "worker-b" and after["fence"] == run_b.fence
    # B itself still reports and finishes.
    (done,) = await b.finish_tasks([worker_pb2.FinishItem(task=held_b, outcome=worker_pb2.OUTCOME_SUCCEEDED)])
    assert done.accepted


async def test_worker_a_cannot_take_over_worker_bs_task_while_b_heartbeats(isolated: Isolated) -> None:
    (row,) = await submit(isolated, max_attempts=1, workload_ms=600_000)
    b = await isolated.link("worker-b")
    (run_b,) = await b.start_tasks([item(row)])
    held_b = worker_pb2.HeldTask(task_id=str(row["id"]), fence=run_b.fence)
    a = await isolated.link("worker-a")
    # A presents the very entry that started B's attempt (as if it had claimed it in Redis), again and again,
    # for well past the silence threshold, while B heartbeats: never a takeover, never its last attempt used up.
    until = time.monotonic() + 3 * HOLDER_SILENT_MS / 1000
    tries = 0
    while time.monotonic() < until:
        await b.heartbeat([held_b])
        (result,) = await a.start_tasks([item(row)])
        assert result.decision == DEFER and result.reason == "worker-b still holds the task", result
        tries += 1
        await asyncio.sleep(0.1)  # the pace of B's heartbeats
    assert tries > 1
    current = await _task(isolated, str(row["id"]))
    assert (current["status"], current["worker_id"], current["attempt"]) == (
        task_pb2.TASK_STATUS_RUNNING,
        "worker-b",
        1,
    )
    # Once B is gone, the same entry takes the task (here: no attempts left, so it fails, as a dead worker's does).
    await isolated.drop("worker-b")

    async def decided() -> worker_pb2.StartResult | None:
        (result,) = await a.start_tasks([item(row)])
        return result if result.decision != DEFER else None

    taken = await eventually(decided, message="the entry is decided once worker-b's stream is gone")
    assert taken.decision == worker_pb2.START_DECISION_SKIP
    assert (await _task(isolated, str(row["id"])))["status"] == task_pb2.TASK_STATUS_FAILED


async def test_a_worker_hears_no_other_workers_commands_and_cannot_speak_under_its_id(isolated: Isolated) -> None:
    (row,) = await submit(isolated, workload_ms=600_000)
    b = await isolated.link("worker-b")
    (run_b,) = await b.start_tasks([item(row)])
    held_b = worker_pb2.HeldTask(task_id=str(row["id"]), fence=run_b.fence)
    # A's token under B's id in the hello: refused before anything is attached.
    impostor = RawStream(isolated, hello_id="worker-b", token_id="worker-a")
    assert await impostor.status() == grpc.StatusCode.PERMISSION_DENIED
    impostor.close()
    # A's own stream, naming B's task (with B's fence) in its heartbeat, after the user cancelled it: A is told
    # only "superseded" (never "cancelled": which fence is current, or what happens to B's task, is not A's).
    await isolated.drop("worker-b")
    b_stream = RawStream(isolated, hello_id="worker-b")
    a_stream = RawStream(isolated, hello_id="worker-a")
    result = await transitions.cancel(isolated.pool, isolated.owner, task_id=str(row["id"]))
    await outbox.push_stop(isolated.redis, result.to_stop, commands.CANCELLED)
    b_stream.heartbeat(held_b)  # the safety net repeats the command, should the push have come before the hello
    to_b = await b_stream.read_until_cancels()
    assert {(c.task.task_id, c.task.fence, c.reason) for c in to_b} == {
        (held_b.task_id, held_b.fence, commands.CANCELLED)
    }
    a_stream.heartbeat(held_b)
    to_a = await a_stream.read_until_cancels()
    assert [(c.task.task_id, c.reason) for c in to_a] == [(held_b.task_id, commands.SUPERSEDED)]
    # A second stream of B (B's own token) replaces the first, which ends; commands go to the new one only.
    b_again = RawStream(isolated, hello_id="worker-b")
    assert await b_stream.status() == grpc.StatusCode.ABORTED
    b_again.heartbeat(held_b)
    again = await b_again.read_until_cancels()
    assert {c.reason for c in again} == {commands.CANCELLED}
    for stream in (b_stream, a_stream, b_again):
        stream.close()


# -- bounds on one worker's input (private scheduler) ------------------------------------------------------
@pytest.mark.parametrize(
    ("hello", "field"),
    [
        (worker_pb2.WorkerHello(worker_id="bad id", slots=1), "hello.worker_id"),
        (worker_pb2.WorkerHello(worker_id="w" * 129, slots=1), "hello.worker_id"),
        (worker_pb2.WorkerHello(worker_id="bounds", slots=0), "hello.slots"),
        (worker_pb2.WorkerHello(worker_id="bounds", slots=100_000), "hello.slots"),
        (worker_pb2.WorkerHello(worker_id="bounds", slots=1, kinds=[f"k{i}" for i in range(257)]), "hello.kinds"),
        (worker_pb2.WorkerHello(worker_id="bounds", slots=1, kinds=["k" * 129]), "hello.kinds"),
    ],
)
async def test_a_hello_beyond_the_bounds_is_refused_naming_the_field(
    isolated: Isolated, hello: worker_pb2.WorkerHello, field: str
) -> None:
    requests = iter([worker_pb2.ConnectRequest(hello=hello)])
    call = isolated.stub.Connect(requests, metadata=metadata(hello.worker_id))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(field)


async def test_too_many_held_tasks_or_progress_reports_end_the_stream_with_a_clear_status(isolated: Isolated) -> None:
    flood = RawStream(isolated, hello_id="flooder", slots=1)
    flood.heartbeat(*(worker_pb2.HeldTask(task_id=str(uuid.uuid4()), fence=i) for i in range(65)))
    assert await flood.status() == grpc.StatusCode.INVALID_ARGUMENT
    flood.close()
    # PROGRESS_PER_SLOT_PER_S: one report per 5 s. Few writes: a client still writing when its stream is
    # ended may see grpc's own INTERNAL instead of the status.
    chatty = RawStream(isolated, hello_id="chatty", slots=1)
    report = worker_pb2.ProgressReport(task=worker_pb2.HeldTask(task_id=str(uuid.uuid4()), fence=1), progress=0.5)
    for _ in range(3):
        chatty.send(progress=report)
    assert await chatty.status() == grpc.StatusCode.RESOURCE_EXHAUSTED
    chatty.close()
    nan = RawStream(isolated, hello_id="nan", slots=1)
    nan.send(progress=worker_pb2.ProgressReport(task=report.task, progress=float("nan")))
    assert await nan.status() == grpc.StatusCode.INVALID_ARGUMENT
    nan.close()


async def test_a_work_request_with_too_many_items_is_refused_whole(isolated: Isolated) -> None:
    link = await isolated.link("bulky")
    items = [worker_pb2.StartItem(task_id=str(uuid.uuid4()), dispatch_id=str(uuid.uuid4())) for _ in range(501)]
    with pytest.raises(WorkRefused, match="items: at most 500") as refused:
        await link.start_tasks(items)
    assert refused.value.permanent
