"""The Python SDK (Client and AsyncClient) against the full stack through Envoy: every call, its errors,
watch() resuming after gateways are killed, wait() built on the watch, and safe retries of SubmitTask.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

import resilienttask
from resilienttask import AsyncClient, Client, RetryPolicy, Snapshot, TaskStatus, TaskUpdate
from services.stack.ports import free_port
from services.stack.stack import Stack
from tests.conftest import unique_email
from tests.helpers import eventually

PASSWORD = "correct horse battery"
FAST = timedelta(milliseconds=200)
LONG = timedelta(seconds=60)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.edge_address) as sdk:
        sdk.signup(unique_email("sdk"), PASSWORD)
        yield sdk


@pytest.fixture
async def aclient(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.edge_address) as sdk:
        await sdk.signup(unique_email("sdk-aio"), PASSWORD)
        yield sdk


# -- auth -------------------------------------------------------------------------------------------
def test_signup_and_login_keep_the_token(stack: Stack) -> None:
    email = unique_email("SDK-Auth")
    with Client(stack.edge_address) as sdk:
        session = sdk.signup(f"  {email.upper()} ", PASSWORD)
        assert session.user.email == email.lower()
        assert session.token and sdk.token == session.token
        assert session.expires_at is not None and session.user.created_at is not None
        assert session.token not in repr(session), "tokens stay out of logs"
        with pytest.raises(resilienttask.AlreadyExists):
            sdk.signup(email, PASSWORD)
        with pytest.raises(resilienttask.Unauthenticated):
            sdk.login(email, "wrong password!")
    with Client(stack.edge_address) as fresh:
        assert fresh.login(email, PASSWORD).user.id == session.user.id
        assert fresh.stats() == resilienttask.TaskStats()


# -- tasks ------------------------------------------------------------------------------------------
def test_submit_with_every_field_is_idempotent_and_waits(client: Client) -> None:
    request_id = f"sdk-{uuid.uuid4()}"
    payload = {"image": "cat.png", "sizes": [64, 128]}
    tasks = client.submit(
        "resize",
        kind="sleep",
        payload=payload,
        workload=FAST,
        max_runtime=timedelta(seconds=30),
        replicas=3,
        max_attempts=2,
        request_id=request_id,
    )
    assert [t.replica_index for t in tasks] == [0, 1, 2]
    assert len({t.batch_id for t in tasks}) == 1 and len({t.id for t in tasks}) == 3
    first = tasks[0]
    assert (first.name, first.kind, first.request_id, first.max_attempts) == ("resize", "sleep", request_id, 2)
    assert (first.workload, first.max_runtime) == (FAST, timedelta(seconds=30))
    assert first.payload == {"image": "cat.png", "sizes": [64, 128]}
    assert first.created_at is not None and first.created_at.tzinfo is not None
    assert first.version >= 1

    again = client.submit("resize", workload=FAST, replicas=3, request_id=request_id)
    assert [t.id for t in again] == [t.id for t in tasks], "the same request_id returns the same tasks"

    done = client.wait(tasks, timeout=60)
    assert [t.id for t in done] == [t.id for t in tasks]
    for task in done:
        assert task.status is TaskStatus.SUCCEEDED and task.succeeded and task.done
        assert task.progress == 1.0 and task.finished_at is not None and task.attempt == 1
        assert task.result == {"slept_s": 0.2}
    assert client.get(first.id) == done[0]
    # Watch events carry summaries; wait() returns the whole tasks (a batch by ListTasks, one task by GetTask).
    assert all(t.payload == {"image": "cat.png", "sizes": [64, 128]} and not t.summary for t in done)
    (single,) = client.wait(client.submit("single", workload=FAST, payload={"n": 2}), timeout=60)
    assert (single.result, single.payload, single.summary) == ({"slept_s": 0.2}, {"n": 2}, False)


def test_list_iterates_over_pages_and_filters(client: Client) -> None:
    batch = client.submit("paged", replicas=5)
    client.wait(batch, timeout=60)
    other = client.submit("other", workload=FAST)
    listed = list(client.list(batch_id=batch[0].batch_id, page_size=2))
    assert sorted(t.id for t in listed) == sorted(t.id for t in batch)
    everything = [t.id for t in client.list(page_size=1)]
    assert len(everything) == 6 and everything[0] == other[0].id, "newest first, across pages"
    succeeded = {t.id for t in client.list("succeeded")}
    assert {t.id for t in batch} <= succeeded
    assert not {t.id for t in client.list(TaskStatus.FAILED)}
    with pytest.raises(ValueError, match="unknown status"):
        next(client.list("finished"))
    client.wait(other, timeout=60)


def test_cancel_cancel_batch_retry_delete_and_clear(client: Client) -> None:
    (long,) = client.submit("long", workload=LONG)
    assert client.cancel(long.id).status in (TaskStatus.CANCELLED, TaskStatus.CANCELLING)
    assert client.wait(long, timeout=60)[0].status is TaskStatus.CANCELLED

    batch = client.submit("batch", workload=LONG, replicas=3)
    cancelled = client.cancel_batch(batch[0].batch_id)
    assert sorted(t.id for t in cancelled) == sorted(t.id for t in batch)
    assert all(t.status is TaskStatus.CANCELLED for t in client.wait(batch, timeout=60))

    (running,) = client.submit("busy", workload=LONG)
    with pytest.raises(resilienttask.FailedPrecondition):
        client.delete(running.id)
    client.cancel(running.id)

    (failing,) = client.submit("flaky", kind="fail", workload=timedelta(milliseconds=50), max_attempts=1)
    (failed,) = client.wait(failing, timeout=60)
    assert failed.status is TaskStatus.FAILED and failed.dead_lettered and failed.error
    assert client.retry(failed.id).status is TaskStatus.QUEUED
    assert client.wait(failed.id, timeout=60)[0].status is TaskStatus.FAILED

    client.delete(long.id)
    with pytest.raises(resilienttask.NotFound):
        client.get(long.id)
    client.wait(running, timeout=60)
    finished = sum(1 for t in client.list() if t.done)
    assert client.clear_history() == finished == 5
    assert list(client.list()) == []


def test_stats_workers_kinds_and_health(client: Client) -> None:
    client.wait(client.submit("count", replicas=2), timeout=60)
    stats = client.stats()
    assert (stats.succeeded, stats.active, stats.failed) == (2, 0, 0)
    workers = client.workers()
    assert len(workers) >= 3 and all(w.slots > 0 and w.last_heartbeat is not None for w in workers)
    assert {"sleep", "fail", "spin"} <= set(client.kinds())
    assert client.health() == "SERVING"


def test_wait_reaches_tasks_older_than_the_snapshot(client: Client) -> None:
    (old,) = client.submit("old", workload=timedelta(seconds=1))
    newer = [t for _ in range(5) for t in client.submit("newer", replicas=50)]
    assert len(newer) > 200, "more tasks than a snapshot holds, so `old` is not in it"
    assert client.wait(old, timeout=60)[0].status is TaskStatus.SUCCEEDED
    assert all(t.succeeded for t in client.wait(newer, timeout=120))


def test_wait_times_out_and_refuses_unknown_tasks(client: Client) -> None:
    (long,) = client.submit("long", workload=LONG)
    with pytest.raises(resilienttask.DeadlineExceeded, match="1 of 1 tasks not finished"):
        client.wait(long, timeout=0.5)
    client.cancel(long.id)
    with pytest.raises(resilienttask.NotFound):
        client.wait(str(uuid.uuid4()), timeout=30)
    with pytest.raises(ValueError, match="at least one"):
        client.wait([])


# -- errors -----------------------------------------------------------------------------------------
def test_errors_for_bad_arguments_missing_login_and_bad_tokens(stack: Stack, client: Client) -> None:
    with pytest.raises(resilienttask.InvalidArgument) as bad:
        client.submit("too many", replicas=51)
    assert bad.value.field == "replicas" and bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(resilienttask.InvalidArgument) as bad_id:
        client.get("not-a-uuid")
    assert bad_id.value.field == "task_id"
    with pytest.raises(resilienttask.InvalidArgument, match="kind"):
        client.submit("x", kind="no-such-kind")
    with pytest.raises(resilienttask.NotFound):
        client.cancel(str(uuid.uuid4()))
    with pytest.raises(ValueError, match="duration"):
        client.submit("x", workload=-1)

    with Client(stack.edge_address) as anonymous:
        with pytest.raises(resilienttask.Unauthenticated, match="not logged in"):
            anonymous.stats()
        with pytest.raises(resilienttask.Unauthenticated, match="not logged in"):
            anonymous.watch()
        assert anonymous.health() == "SERVING", "health needs no login"
    with Client(stack.edge_address, token="not.a.jwt") as forged, pytest.raises(resilienttask.Unauthenticated):
        forged.stats()


def test_a_bad_server_address_is_unavailable(client: Client) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    retry = RetryPolicy(attempts=2, initial_backoff_s=0.01)
    with Client(nowhere, token=client.token, retry=retry) as lost:
        with pytest.raises(resilienttask.Unavailable):
            lost.stats()
        with pytest.raises(resilienttask.Unavailable):
            next(iter(lost.watch()))
    with pytest.raises(ValueError, match="host:port"):
        Client(" ")


def test_tls_and_channel_options_reach_the_channel(stack: Stack, client: Client) -> None:
    # The edge speaks plaintext here: a TLS handshake cannot succeed, which shows TLS is used.
    retry = RetryPolicy(attempts=1)
    with (
        Client(stack.edge_address, tls=True, retry=retry, timeout=5) as secure,
        pytest.raises(resilienttask.Unavailable),
    ):
        secure.health()
    creds = grpc.ssl_channel_credentials()
    with (
        Client(stack.edge_address, tls=creds, retry=retry, timeout=5) as secure,
        pytest.raises(resilienttask.Unavailable),
    ):
        secure.health()
    client.submit("big", payload={"blob": "x" * 2000})
    tiny = [("grpc.max_receive_message_length", 512)]
    with (
        Client(stack.edge_address, token=client.token, options=tiny) as small,
        pytest.raises(resilienttask.ResourceExhausted),
    ):
        list(small.list())


# -- watch ------------------------------------------------------------------------------------------
def test_watch_starts_with_a_snapshot_and_resumes_from_its_token(client: Client) -> None:
    with client.watch() as events:
        first = next(events)
        assert isinstance(first, Snapshot) and first.resume_token
        (task,) = client.submit("watched", workload=FAST)
        versions = []
        for event in events:
            if isinstance(event, TaskUpdate) and event.task.id == task.id:
                versions.append(event.task.version)
                if event.task.done:
                    break
        token = events.resume_token
    assert versions == sorted(set(versions)), "in version order, no repeats"
    assert event.task.status is TaskStatus.SUCCEEDED and event.stats.succeeded >= 1

    (later,) = client.submit("after", workload=FAST)
    with client.watch(token) as resumed:
        replayed = next(resumed)
    assert isinstance(replayed, TaskUpdate), "resuming replays; it does not re-snapshot"
    assert replayed.task.id == later.id
    client.wait(later, timeout=60)


def _created(events: Iterator[object], ids: set[str]) -> list[str]:
    """Ids of the first events that create one of `ids` (version 1), in the order they come, until all came."""
    seen: list[str] = []
    for event in events:
        if isinstance(event, TaskUpdate) and event.task.id in ids and event.task.version == 1:
            seen.append(event.task.id)
            if len(seen) == len(ids):
                break
    return seen


def test_a_watch_stopped_in_the_middle_of_a_batch_resumes_with_the_rest(client: Client) -> None:
    """The replicas of one submission are appended together, so the gateway sends them as one batch."""
    with client.watch() as events:
        assert isinstance(next(events), Snapshot)
        tasks = client.submit("batched", workload=LONG, replicas=5)
        ids = [t.id for t in tasks]
        assert _created(events, set(ids[:2])) == ids[:2]
        token = events.resume_token
    try:
        with client.watch(token) as resumed:
            first = next(resumed)
            assert isinstance(first, TaskUpdate) and first.task.id == ids[2], "a replay right after the token"
            assert [ids[2], *_created(resumed, set(ids[3:]))] == ids[2:], "the rest of the batch, nothing skipped"
    finally:
        client.cancel_batch(tasks[0].batch_id)


async def test_async_client_covers_every_call(aclient: AsyncClient) -> None:
    tasks = await aclient.submit("aio", workload=FAST, replicas=2, payload={"n": 1})
    assert (await aclient.get(tasks[0].id)).id == tasks[0].id
    done = await aclient.wait(tasks, timeout=60)
    assert all(t.succeeded for t in done)
    assert all(t.result == {"slept_s": 0.2} and t.payload == {"n": 1} and not t.summary for t in done)
    assert sorted([t.id async for t in aclient.list(page_size=1)]) == sorted(t.id for t in tasks)

    (long,) = await aclient.submit("long", workload=LONG)
    assert (await aclient.cancel(long.id)).status in (TaskStatus.CANCELLED, TaskStatus.CANCELLING)
    batch = await aclient.submit("batch", workload=LONG, replicas=2)
    assert len(await aclient.cancel_batch(batch[0].batch_id)) == 2
    seen: list[TaskStatus] = []
    finished = await aclient.wait([long, *batch], timeout=60, on_change=lambda t: seen.append(t.status))
    assert all(t.status is TaskStatus.CANCELLED for t in finished) and TaskStatus.CANCELLED in seen
    assert (await aclient.retry(long.id)).status is TaskStatus.QUEUED
    await aclient.cancel(long.id)
    await aclient.wait(long, timeout=60)
    await aclient.delete(tasks[0].id)
    with pytest.raises(resilienttask.NotFound):
        await aclient.get(tasks[0].id)
    assert await aclient.clear_history() == 4
    (single,) = await aclient.wait(await aclient.submit("single", workload=FAST), timeout=60)
    assert single.result == {"slept_s": 0.2} and not single.summary
    assert (await aclient.stats()).active == 0
    assert len(await aclient.workers()) >= 3
    assert "sleep" in await aclient.kinds()
    assert await aclient.health() == "SERVING"
    with pytest.raises(resilienttask.DeadlineExceeded):
        (slow,) = await aclient.submit("slow", workload=LONG)
        await aclient.wait(slow, timeout=0.3)
    await aclient.cancel(slow.id)


async def _kill_and_restart(stack: Stack, name: str) -> None:
    stack.processes[name].kill()
    await asyncio.to_thread(stack.restart, name)


async def test_watch_survives_gateway_kills_without_missing_events(stack: Stack, aclient: AsyncClient) -> None:
    """Every gateway is killed in turn while the SDK watches; its events equal a replay of the whole history."""
    received: list[TaskUpdate] = []
    watch = aclient.watch()
    snapshot = await anext(watch)
    assert isinstance(snapshot, Snapshot)

    async def consume() -> None:
        async for event in watch:
            if isinstance(event, TaskUpdate):
                received.append(event)

    consumer = asyncio.create_task(consume())
    try:
        submitted = []
        for name in stack.names("gateway"):
            await _kill_and_restart(stack, name)
            batch = await aclient.submit(f"after-{name}", workload=FAST, replicas=3)
            submitted += batch
            await aclient.wait(batch, timeout=60)
        (marker,) = await aclient.submit("marker")
        (marker,) = await aclient.wait(marker, timeout=60)

        async def saw_marker() -> bool:
            return any(e.task.id == marker.id and e.task.version == marker.version for e in received)

        await eventually(saw_marker, timeout_s=60, message="the watch caught up after the kills")
    finally:
        watch.close()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    assert consumer.exception() is None
    assert watch.reconnects >= 1, "the gateway serving the watch was among those killed"

    replay: list[TaskUpdate] = []
    async with aclient.watch(snapshot.resume_token) as resumed:
        async for event in resumed:
            if isinstance(event, TaskUpdate):
                replay.append(event)
                if event.resume_token == received[-1].resume_token:
                    break
    live = [(e.task.id, e.task.version) for e in received]
    assert live == [(e.task.id, e.task.version) for e in replay], "nothing missed, nothing twice, same order"
    finals = {e.task.id: e.task for e in received}
    assert all(finals[t.id].status is TaskStatus.SUCCEEDED for t in submitted)


# -- retries ------------------------------------------------------------------------------------------
class LostReplyProxy(grpc.GenericRpcHandler):
    """A real gRPC hop in front of the edge that forwards every call, but after `arm(method)` drops the
    reply of the next call of that method and answers UNAVAILABLE instead, as a broken connection would.
    """

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.submits: list[bytes] = []
        self.armed = ""

    def arm(self, method: str = "SubmitTask") -> None:
        self.armed, self.submits = method, []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = tuple((k, v) for k, v in context.invocation_metadata() if k == "authorization")
            call = self.channel.unary_unary(method)
            try:
                reply: bytes = await call(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            if method.endswith("/SubmitTask"):
                self.submits.append(request)
            if self.armed and method.endswith(f"/{self.armed}"):
                self.armed = ""
                await context.abort(grpc.StatusCode.UNAVAILABLE, "reply lost on purpose")
            return reply

        return grpc.unary_unary_rpc_method_handler(forward)


async def test_submit_retries_unavailable_with_the_same_request_id(stack: Stack) -> None:
    proxy = LostReplyProxy(stack.edge_address)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((proxy,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    retry = RetryPolicy(attempts=3, initial_backoff_s=0.01)
    try:
        async with AsyncClient(address, retry=retry) as sdk:
            await sdk.signup(unique_email("retry"), PASSWORD)
            direct = AsyncClient(stack.edge_address, token=sdk.token)  # the proxy forwards unary calls only
            proxy.arm()
            tasks = await sdk.submit("once", workload=FAST, replicas=2)
            assert len(proxy.submits) == 2 and proxy.submits[0] == proxy.submits[1], "one request, sent twice"
            assert len(tasks) == 2
            stats = await sdk.stats()
            assert stats.active + stats.succeeded == 2, "no duplicate batch"

            with Client(address, token=sdk.token, retry=retry) as blocking:
                proxy.arm()
                more = await asyncio.to_thread(blocking.submit, "sync", workload=FAST)
                assert len(proxy.submits) == 2 and len(more) == 1
            assert len([t async for t in sdk.list()]) == 3
            await direct.wait([*tasks, *more], timeout=60)

            (long,) = await sdk.submit("long", workload=LONG)
            proxy.arm("CancelTask")
            with pytest.raises(resilienttask.Unavailable):
                await sdk.cancel(long.id)  # not idempotent in its reply, so not retried
            assert (await direct.wait(long, timeout=60))[0].status is TaskStatus.CANCELLED
            await direct.close()
    finally:
        await server.stop(None)
        await proxy.channel.close()


# -- the examples -------------------------------------------------------------------------------------
def test_quickstart_example_runs(stack: Stack) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "quickstart.py"),
            "--server",
            stack.edge_address,
            "--email",
            unique_email("quickstart"),
            "--password",
            PASSWORD,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "submitted batch" in result.stdout and "succeeded" in result.stdout
