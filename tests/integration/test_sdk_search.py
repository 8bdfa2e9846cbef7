"""The SDK's search, history and bulk calls (Client and AsyncClient) through Envoy: list() and count() with
filter keywords, history(), and cancel_many/retry_many/delete_many looping over pages until done."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

import resilienttask
from resilienttask import AsyncClient, BulkResult, Client, TaskStatus
from services.stack.stack import Stack
from tests.conftest import unique_email
from tests.helpers import eventually, wait_until

PASSWORD = "correct horse battery"
LATER = timedelta(hours=1)


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.edge_address) as sdk:
        sdk.signup(unique_email("sdk-search"), PASSWORD)
        yield sdk


@pytest.fixture
async def aclient(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.edge_address) as sdk:
        await sdk.signup(unique_email("sdk-search-aio"), PASSWORD)
        yield sdk


def test_list_count_history_and_bulk_actions(client: Client) -> None:
    tag = uuid.uuid4().hex[:8]
    waiting = client.submit(f"{tag} 50% off", replicas=7, delay=LATER)
    failed = client.submit(f"{tag} broken", kind="fail", max_attempts=1, replicas=3)
    wait_until(lambda: client.count(name_contains=tag, statuses=["failed"]) == 3, timeout_s=30)

    assert [t.id for t in client.list(name_contains="50%", page_size=2)] == sorted(
        (t.id for t in waiting), reverse=True
    )
    assert client.count(name_contains=tag) == 10
    assert client.count(kind="fail", dead_lettered=True, name_contains=tag) == 3
    assert client.count(batch_id=waiting[0].batch_id) == 7
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert len(list(client.list(TaskStatus.SCHEDULED, name_contains=tag, created_after=since))) == 7
    assert [t.id for t in client.list(id_prefix=failed[0].id[:18])] == [failed[0].id]

    history = client.history(failed[0].id)
    assert history.task.id == failed[0].id and not history.truncated
    assert [(a.attempt, a.outcome) for a in history.attempts] == [(1, TaskStatus.FAILED)]
    assert [t.to_status for t in history.transitions] == [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.FAILED]
    assert history.transitions[0].from_status is None
    assert history.to_dict()["attempts"][0]["outcome"] == "failed"

    # Pages of 2 until done, totals over every page; repeats affect nothing.
    assert client.cancel_many(name_contains=f"{tag} 50%", page_size=2) == BulkResult(affected=7, skipped=0)
    assert client.cancel_many(name_contains=f"{tag} 50%", page_size=2) == BulkResult(affected=0, skipped=7)
    assert client.retry_many([t.id for t in failed]) == BulkResult(affected=3, skipped=0)
    assert client.delete_many(batch_id=waiting[0].batch_id, statuses=["cancelled"]) == BulkResult(7, 0)
    assert client.count(name_contains=tag) == 3

    with pytest.raises(ValueError, match="at least one filter condition"):
        client.delete_many()
    with pytest.raises(ValueError, match="not both"):
        client.cancel_many([failed[0].id], kind="fail")
    with pytest.raises(TypeError, match="unknown filter condition"):
        client.count(nmae_contains="typo")  # type: ignore[call-arg]
    with pytest.raises(resilienttask.InvalidArgument) as raised:
        client.count(id_prefix="not hex")
    assert raised.value.field == "filter.id_prefix"
    with pytest.raises(resilienttask.NotFound):
        client.history(str(uuid.uuid4()))


async def test_the_async_client_offers_the_same(aclient: AsyncClient) -> None:
    tag = uuid.uuid4().hex[:8]
    tasks = await aclient.submit(f"{tag} job", replicas=4, delay=LATER)
    found = [t.id async for t in aclient.list(name_contains=tag, statuses=[TaskStatus.SCHEDULED], page_size=3)]
    assert found == sorted((t.id for t in tasks), reverse=True)  # replicas share created_at: by id then
    assert await aclient.count(name_contains=tag) == 4
    assert await aclient.cancel_many([t.id for t in tasks]) == BulkResult(affected=4, skipped=0)

    async def all_cancelled() -> bool:
        return await aclient.count(name_contains=tag, statuses=["cancelled"]) == 4

    await eventually(all_cancelled, timeout_s=10)
    history = await aclient.history(tasks[0].id)
    assert [t.to_status for t in history.transitions] == [TaskStatus.SCHEDULED, TaskStatus.CANCELLED]
    assert await aclient.delete_many(name_contains=tag) == BulkResult(affected=4, skipped=0)
    assert await aclient.retry_many(name_contains=tag) == BulkResult(affected=0, skipped=0)
