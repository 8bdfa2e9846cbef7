"""Searching tasks through the edge: every TaskFilter condition in ListTasks and CountTasks, keyset pages that do
not shift under a filter, and INVALID_ARGUMENT naming the field for every bad input."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from resilienttask.v1 import scheduler_pb2, task_pb2
from tests.integration.accounts import Account, signup
from tests.integration.tasks import UserTasks

SCHEDULED = task_pb2.TASK_STATUS_SCHEDULED
FAILED = task_pb2.TASK_STATUS_FAILED
# Tasks that wait an hour for their start: stored and searchable, never taking a worker's slot.
LATER_S = 3600.0


class Search(UserTasks):
    """ListTasks (every page) and CountTasks with a filter."""

    async def ids(self, page_size: int = 100, **fields: Any) -> list[str]:
        request = scheduler_pb2.ListTasksRequest(page_size=page_size, **fields)
        found: list[str] = []
        while True:
            reply = await self.stub.ListTasks(request, metadata=self.account.metadata)
            found += [t.id for t in reply.tasks]
            if not reply.next_page_token:
                return found
            request.page_token = reply.next_page_token

    async def matching(self, **conditions: Any) -> list[str]:
        """Ids matching the filter, newest first; CountTasks must agree."""
        task_filter = scheduler_pb2.TaskFilter(**conditions)
        found = await self.ids(filter=task_filter)
        counted = await self.stub.CountTasks(
            scheduler_pb2.CountTasksRequest(filter=task_filter), metadata=self.account.metadata
        )
        assert counted.count == len(found)
        return found


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


async def test_each_filter_selects_exactly_its_tasks(edge: grpc.aio.Channel) -> None:
    user = Search(edge, await signup(edge, "search"))
    other = Search(edge, await signup(edge, "search-other"))
    tag = uuid.uuid4().hex[:8]
    names = {
        "percent": f"{tag} 100% done",
        "underscore": f"{tag} a_b",
        "lookalike": f"{tag} aXb",
        "upper": f"{tag} GAMMA ray",
        "backslash": f"{tag} back\\slash",
    }
    made = {key: (await user.submit(name=name, delay_s=LATER_S))[0] for key, name in names.items()}
    batch = await user.submit(name=f"{tag} batch", replicas=3, delay_s=LATER_S)
    dead = (await user.submit("fail", name=f"{tag} dead", workload_s=0, max_attempts=1))[0]
    await user.wait_for(dead.id, {FAILED})
    await other.submit(name=f"{tag} 100% done", delay_s=LATER_S)  # another user's twin: never in the results
    keyed = scheduler_pb2.SubmitTaskRequest(
        name=f"{tag} keyed", concurrency_key=f"{tag}-key", concurrency_limit=1, request_id=str(uuid.uuid4())
    )
    keyed.delay.FromSeconds(int(LATER_S))
    made["keyed"] = (await user.stub.SubmitTask(keyed, metadata=user.account.metadata)).tasks[0]

    everything = await user.matching(name_contains=tag)
    assert len(everything) == 10
    assert await user.matching(concurrency_key=f"{tag}-key") == [made["keyed"].id]
    assert await user.matching(concurrency_key=f"{tag}-KEY") == []
    assert await user.matching(name_contains="100%") == [made["percent"].id]
    assert await user.matching(name_contains="%") == [made["percent"].id]
    assert await user.matching(name_contains=f"{tag} a_b") == [made["underscore"].id]
    assert await user.matching(name_contains="_b") == [made["underscore"].id]
    assert await user.matching(name_contains="k\\s") == [made["backslash"].id]
    assert await user.matching(name_contains=f"{tag} gamma") == [made["upper"].id]  # ignoring case
    assert await user.matching(name_contains=f"{tag} nothing") == []

    assert await user.matching(name_contains=tag, kind="fail") == [dead.id]
    assert await user.matching(name_contains=tag, dead_lettered=True) == [dead.id]
    assert await user.matching(name_contains=tag, statuses=[FAILED]) == [dead.id]
    assert len(await user.matching(name_contains=tag, statuses=[FAILED, SCHEDULED])) == 10
    assert sorted(await user.matching(batch_id=batch[0].batch_id)) == sorted(t.id for t in batch)
    assert await user.matching(id_prefix=dead.id[:13]) == [dead.id]
    assert await user.matching(id_prefix=dead.id.upper()) == [dead.id]
    assert await user.matching(schedule_id=str(uuid.uuid4())) == []

    # Time range: at or after the first name's creation, before the batch's.
    after = made["underscore"].created_at.ToDatetime(tzinfo=UTC)
    before = batch[0].created_at.ToDatetime(tzinfo=UTC)
    window = await user.matching(name_contains=tag, created_after=stamp(after), created_before=stamp(before))
    assert window == [made[k].id for k in ("backslash", "upper", "lookalike", "underscore")]

    # ListTasks' own status and batch_id are ANDed with the filter.
    assert await user.ids(status=FAILED, filter=scheduler_pb2.TaskFilter(name_contains=tag)) == [dead.id]
    assert await user.ids(status=FAILED, filter=scheduler_pb2.TaskFilter(statuses=[SCHEDULED])) == []
    assert await user.ids(batch_id=batch[0].batch_id, filter=scheduler_pb2.TaskFilter(batch_id=dead.batch_id)) == []
    both = scheduler_pb2.TaskFilter(batch_id=batch[0].batch_id, name_contains=tag)
    assert len(await user.ids(batch_id=batch[0].batch_id, filter=both)) == 3

    # The other user sees none of these, whatever the filter.
    assert await other.matching(batch_id=batch[0].batch_id) == []
    assert await other.matching(id_prefix=dead.id) == []
    assert len(await other.matching(name_contains=tag)) == 1


async def test_keyset_pages_under_a_filter_do_not_shift(edge: grpc.aio.Channel) -> None:
    user = Search(edge, await signup(edge, "pages"))
    tag = uuid.uuid4().hex[:8]
    for i in range(5):
        await user.submit(name=f"{tag} other {i}", delay_s=LATER_S)
        await user.submit(name=f"{tag} wanted {i}", replicas=5, delay_s=LATER_S)
    expected = await user.ids(filter=scheduler_pb2.TaskFilter(name_contains=f"{tag} wanted"))
    assert len(expected) == 25

    # Page by 7; after each page, the tasks already seen are cancelled (they no longer match) or deleted.
    task_filter = scheduler_pb2.TaskFilter(name_contains=f"{tag} wanted", statuses=[SCHEDULED])
    request = scheduler_pb2.ListTasksRequest(page_size=7, filter=task_filter)
    seen: list[str] = []
    while True:
        reply = await user.stub.ListTasks(request, metadata=user.account.metadata)
        assert len(reply.tasks) <= 7
        seen += [t.id for t in reply.tasks]
        for task in reply.tasks:
            await user.cancel(task.id)
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert seen == expected  # every one, once, newest first


BAD_FILTERS: Sequence[tuple[dict[str, Any], str]] = [
    ({"statuses": [42]}, "filter.statuses"),
    ({"name_contains": "x" * 201}, "filter.name_contains"),
    ({"name_contains": "a\x00b"}, "filter.name_contains"),
    ({"id_prefix": "xyz"}, "filter.id_prefix"),
    ({"id_prefix": "1234-"}, "filter.id_prefix"),
    ({"id_prefix": "0" * 37}, "filter.id_prefix"),
    ({"batch_id": "not-a-uuid"}, "filter.batch_id"),
    ({"schedule_id": "nope"}, "filter.schedule_id"),
    ({"kind": "k" * 129}, "filter.kind"),
    ({"created_after": timestamp_pb2.Timestamp(seconds=0, nanos=-1)}, "filter.created_after"),
    ({"created_before": timestamp_pb2.Timestamp(seconds=300_000_000_000)}, "filter.created_before"),
    (
        {
            "created_after": stamp(datetime(2026, 1, 2, tzinfo=UTC)),
            "created_before": stamp(datetime(2026, 1, 1, tzinfo=UTC)),
        },
        "filter.created_before",
    ),
]


@pytest.mark.parametrize(("conditions", "field"), BAD_FILTERS, ids=[f for _, f in BAD_FILTERS])
async def test_a_bad_filter_is_invalid_argument_naming_the_field(
    edge: grpc.aio.Channel, account: Account, conditions: dict[str, Any], field: str
) -> None:
    user = Search(edge, account)
    task_filter = scheduler_pb2.TaskFilter(**conditions)
    md = account.metadata
    calls = [
        (user.stub.ListTasks(scheduler_pb2.ListTasksRequest(filter=task_filter), metadata=md), field),
        (user.stub.CountTasks(scheduler_pb2.CountTasksRequest(filter=task_filter), metadata=md), field),
        (
            user.stub.CancelTasks(
                scheduler_pb2.CancelTasksRequest(selection=scheduler_pb2.TaskSelection(filter=task_filter)),
                metadata=md,
            ),
            f"selection.{field}",
        ),
    ]
    for call, named in calls:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith(f"{named}:")


@pytest.fixture
async def account(edge: grpc.aio.Channel) -> Account:
    return await signup(edge, "bad-filter")


BAD_SELECTIONS: Sequence[tuple[dict[str, Any], str]] = [
    ({}, "selection"),
    ({"selection": scheduler_pb2.TaskSelection(ids=scheduler_pb2.TaskIds())}, "selection.ids.task_ids"),
    (
        {"selection": scheduler_pb2.TaskSelection(ids=scheduler_pb2.TaskIds(task_ids=[str(uuid.uuid4())] * 501))},
        "selection.ids.task_ids",
    ),
    (
        {"selection": scheduler_pb2.TaskSelection(ids=scheduler_pb2.TaskIds(task_ids=[str(uuid.uuid4()), "bad"]))},
        "selection.ids.task_ids[1]",
    ),
    (
        {
            "selection": scheduler_pb2.TaskSelection(ids=scheduler_pb2.TaskIds(task_ids=[str(uuid.uuid4())])),
            "page_token": "abc",
        },
        "page_token",
    ),
    ({"selection": scheduler_pb2.TaskSelection(filter=scheduler_pb2.TaskFilter()), "page_size": 501}, "page_size"),
    ({"selection": scheduler_pb2.TaskSelection(filter=scheduler_pb2.TaskFilter()), "page_size": -1}, "page_size"),
    (
        {"selection": scheduler_pb2.TaskSelection(filter=scheduler_pb2.TaskFilter()), "page_token": "%%%"},
        "page_token",
    ),
]


async def test_bad_bulk_selections_and_history_ids_are_invalid_argument(
    edge: grpc.aio.Channel, account: Account
) -> None:
    user = Search(edge, account)
    md = account.metadata
    for fields, named in BAD_SELECTIONS:
        for method, message in (
            (user.stub.CancelTasks, scheduler_pb2.CancelTasksRequest),
            (user.stub.RetryTasks, scheduler_pb2.RetryTasksRequest),
            (user.stub.DeleteTasks, scheduler_pb2.DeleteTasksRequest),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await method(message(**fields), metadata=md)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, method)
            assert (raised.value.details() or "").startswith(f"{named}:"), raised.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await user.stub.GetTaskHistory(scheduler_pb2.GetTaskHistoryRequest(task_id="nope"), metadata=md)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("task_id:")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await user.stub.ListTasks(scheduler_pb2.ListTasksRequest(status=99), metadata=md)
    assert (raised.value.details() or "").startswith("status:")
