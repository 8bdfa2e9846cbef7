"""Delayed tasks and schedules through the SDK (Client and AsyncClient) against the full stack through Envoy:
every call, what the models carry, and the errors the service names."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

import resilienttask
from resilienttask import AsyncClient, CatchupPolicy, Client, OverlapPolicy, Schedule, TaskStatus
from services.stack.stack import Stack
from tests.conftest import unique_email
from tests.helpers import eventually, wait_until

PASSWORD = "correct horse battery"
FAST = timedelta(milliseconds=100)
DELAY = timedelta(seconds=1.5)
LONG = timedelta(seconds=60)


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.edge_address) as sdk:
        sdk.signup(unique_email("sdk-sched"), PASSWORD)
        yield sdk


@pytest.fixture
async def aclient(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.edge_address) as sdk:
        await sdk.signup(unique_email("sdk-sched-aio"), PASSWORD)
        yield sdk


# -- delayed tasks ----------------------------------------------------------------------------------
def test_delayed_tasks_wait_as_scheduled_then_run(client: Client) -> None:
    before = datetime.now(UTC)
    (delayed,) = client.submit("later", workload=FAST, delay=DELAY)
    assert delayed.status is TaskStatus.SCHEDULED and not delayed.done
    assert delayed.run_at is not None and delayed.run_at >= before + DELAY - timedelta(milliseconds=50)
    at = datetime.now(UTC) + DELAY
    (timed,) = client.submit("at a time", workload=FAST, run_at=at)
    assert timed.status is TaskStatus.SCHEDULED and timed.run_at is not None
    assert abs(timed.run_at - at) < timedelta(milliseconds=1)
    (cancelled,) = client.submit("never", workload=FAST, delay=LONG)

    stats = client.stats()
    assert (stats.scheduled, stats.active) == (3, 0), "scheduled tasks are not active"
    assert {t.id for t in client.list(TaskStatus.SCHEDULED)} == {delayed.id, timed.id, cancelled.id}
    assert client.cancel(cancelled.id).status is TaskStatus.CANCELLED, "a scheduled task is cancelled at once"

    done = client.wait([delayed, timed], timeout=60)
    for task, was in zip(done, (delayed, timed), strict=True):
        assert task.status is TaskStatus.SUCCEEDED and task.run_at == was.run_at
        assert task.started_at is not None and was.run_at is not None and task.started_at >= was.run_at
    never = client.get(cancelled.id)
    assert never.status is TaskStatus.CANCELLED and never.started_at is None and never.attempt == 0

    (failing,) = client.submit("flaky", kind="fail", workload=FAST, max_attempts=1)
    client.wait(failing, timeout=60)
    retried = client.retry(failing.id, delay=DELAY)
    assert retried.status is TaskStatus.SCHEDULED and retried.run_at is not None
    assert client.wait(failing, timeout=60)[0].status is TaskStatus.FAILED

    with pytest.raises(ValueError, match="not both"):
        client.submit("x", run_at=at, delay=DELAY)
    with pytest.raises(ValueError, match="time zone"):
        client.submit("x", run_at=datetime.now() + DELAY)  # a naive time: refused
    with pytest.raises(resilienttask.InvalidArgument) as past:
        client.submit("x", run_at=datetime.now(UTC) - timedelta(hours=1))
    assert past.value.field == "run_at"
    with pytest.raises(resilienttask.InvalidArgument) as far:
        client.submit("x", delay=timedelta(days=400))
    assert far.value.field == "delay"


# -- schedules --------------------------------------------------------------------------------------
def _fired(client: Client, schedule: Schedule, at_least: int) -> Schedule:
    """The schedule once it fired at least this often (asked again and again: schedules have no stream)."""

    def probe() -> Schedule | None:
        now = client.get_schedule(schedule.id)
        return now if now.fired >= at_least else None

    return wait_until(probe, timeout_s=30, interval_s=0.1, message=f"{schedule.name} fired {at_least} times")


def test_every_schedule_call_of_the_blocking_client(client: Client) -> None:
    ticker = client.create_schedule(
        "ticker",
        interval=1,
        task_name="tick",
        workload=FAST,
        payload={"n": 1},
        overlap=OverlapPolicy.ALLOW,
        catchup=CatchupPolicy.SKIP,
    )
    assert (ticker.name, ticker.interval, ticker.cron, ticker.paused) == ("ticker", timedelta(seconds=1), None, False)
    assert (ticker.task.name, ticker.task.payload, ticker.task.workload) == ("tick", {"n": 1}, FAST)
    assert (ticker.overlap, ticker.catchup) == (OverlapPolicy.ALLOW, CatchupPolicy.SKIP)
    assert ticker.next_runs and ticker.next_runs == tuple(sorted(ticker.next_runs))
    assert ticker.last_slot is None and ticker.last_status is None and ticker.fired == 0

    fired = _fired(client, ticker, 2)
    assert fired.last_slot is not None and fired.last_batch_id and fired.last_status is not None
    ticks = [t for t in client.list() if t.schedule_id == ticker.id]
    assert ticks and all(t.name == "tick" and t.payload == {"n": 1} for t in ticks)
    assert fired.last_batch_id in {t.batch_id for t in ticks}

    paused = client.pause_schedule(ticker.id)
    assert paused.paused and paused.next_runs == ()
    # A second schedule's firings show the firing loop going on; the paused one must not move meanwhile. It
    # allows overlap so the trigger below fires even while a slot's task is still running on a loaded machine.
    witness = client.create_schedule("witness", interval=1, workload=FAST, overlap=OverlapPolicy.ALLOW)
    frozen = client.get_schedule(ticker.id).fired
    _fired(client, witness, 2)
    assert client.get_schedule(ticker.id).fired == frozen, "a paused schedule does not fire"
    resumed = client.resume_schedule(ticker.id)
    assert not resumed.paused and resumed.next_runs
    _fired(client, ticker, frozen + 1)

    triggered = client.trigger_schedule(witness.id, request_id="now-1")
    assert triggered and all(t.schedule_id == witness.id for t in triggered)
    assert [t.id for t in client.trigger_schedule(witness.id, request_id="now-1")] == [t.id for t in triggered]

    cron = client.update_schedule(
        witness.id, "witness at five", cron="*/5 * * * *", time_zone="Europe/Paris", replicas=2, max_attempts=2
    )
    assert (cron.name, cron.cron, cron.time_zone, cron.interval) == (
        "witness at five",
        "*/5 * * * *",
        "Europe/Paris",
        None,
    )
    assert (cron.task.replicas, cron.task.max_attempts) == (2, 2) and cron.version > witness.version
    assert all(t.astimezone(UTC).minute % 5 == 0 and t.second == 0 for t in cron.next_runs)

    again = client.create_schedule("ticker", interval=1, request_id="create-once", paused=True)
    assert again.paused and client.create_schedule("other", interval=5, request_id="create-once").id == again.id
    listed = list(client.list_schedules(page_size=1))
    assert [s.id for s in listed] == [ticker.id, witness.id, again.id], "oldest first, across pages"

    for schedule in listed:
        client.delete_schedule(schedule.id)
    with pytest.raises(resilienttask.NotFound):
        client.get_schedule(ticker.id)
    assert list(client.list_schedules()) == []
    assert any(t.schedule_id == ticker.id for t in client.list()), "the tasks a schedule submitted are kept"
    for task in client.list():
        if not task.done:
            with contextlib.suppress(resilienttask.FailedPrecondition):  # it may finish between list and cancel
                client.cancel(task.id)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "0 3 * * *", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"interval": 0.5}, "interval"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(client: Client, options: dict[str, object], field: str) -> None:
    with pytest.raises(resilienttask.InvalidArgument) as refused:
        client.create_schedule("bad", **options)  # type: ignore[arg-type]
    assert field in refused.value.message.split(":")[0], refused.value.message
    assert list(client.list_schedules()) == [], "nothing half-written"
    with pytest.raises(resilienttask.NotFound):
        client.pause_schedule("00000000-0000-0000-0000-000000000000")


async def test_every_schedule_call_of_the_async_client(aclient: AsyncClient) -> None:
    (delayed,) = await aclient.submit("later", workload=FAST, delay=DELAY)
    assert delayed.status is TaskStatus.SCHEDULED and (await aclient.stats()).scheduled == 1
    retried_source = (await aclient.submit("to retry", workload=LONG))[0]
    await aclient.cancel(retried_source.id)
    await aclient.wait(retried_source, timeout=60)
    assert (await aclient.retry(retried_source.id, delay=LONG)).status is TaskStatus.SCHEDULED
    await aclient.cancel(retried_source.id)

    created = await aclient.create_schedule(
        "aio", interval=1, workload=FAST, overlap="allow", catchup=CatchupPolicy.ALL, catchup_limit=3
    )
    assert (created.catchup, created.catchup_limit) == (CatchupPolicy.ALL, 3)
    assert (await aclient.get_schedule(created.id)).id == created.id
    fired = await eventually(
        lambda: _async_fired(aclient, created.id), timeout_s=30, interval_s=0.1, message="the async schedule fired"
    )
    assert fired.last_status is not None
    assert (await aclient.pause_schedule(created.id)).paused
    assert not (await aclient.resume_schedule(created.id)).paused
    tasks = await aclient.trigger_schedule(created.id)
    assert tasks and tasks[0].schedule_id == created.id
    updated = await aclient.update_schedule(created.id, "aio cron", cron="0 3 * * *")
    assert (updated.cron, updated.time_zone) == ("0 3 * * *", "")
    assert [s.id async for s in aclient.list_schedules(page_size=1)] == [created.id]
    await aclient.delete_schedule(created.id)
    with pytest.raises(resilienttask.NotFound):
        await aclient.get_schedule(created.id)
    (done,) = await aclient.wait(delayed, timeout=60)
    assert done.status is TaskStatus.SUCCEEDED and done.started_at is not None and done.run_at is not None
    assert done.started_at >= done.run_at
    async for task in aclient.list():
        if not task.done:
            with contextlib.suppress(resilienttask.FailedPrecondition):  # it may finish between list and cancel
                await aclient.cancel(task.id)


async def _async_fired(aclient: AsyncClient, schedule_id: str) -> Schedule | None:
    schedule = await aclient.get_schedule(schedule_id)
    return schedule if schedule.fired >= 1 else None
