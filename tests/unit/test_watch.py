"""The watch fan-out's pure parts: resume tokens, a subscriber's queue rules, stats along events, settings."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter

import pytest

from resilienttask.v1 import scheduler_pb2, task_pb2
from services.core import task_summary
from services.core.config import ConfigError
from services.core.errors import InvalidArgument
from services.core.events import StoredEvent, TaskChange, parse_stream_id
from services.core.settings import load
from services.edge.render import compose_config
from services.edge.routes import route_specs
from services.gateway.watch import tokens, wire
from services.gateway.watch.config import WatchConfig
from services.gateway.watch.stats import stats_along
from services.gateway.watch.stream import watch_tasks
from services.gateway.watch.subscriber import Subscriber
from services.gateway.watch.wire import EncodedEvent

S = task_pb2


# -- tokens ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry_id", ["0-0", "1700000000000-0", "1700000000000-42", f"{(1 << 64) - 1}-7"])
def test_tokens_round_trip(entry_id: str) -> None:
    token = tokens.encode(entry_id)
    assert entry_id not in token, "opaque to clients"
    assert tokens.decode(token) == entry_id


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "v1:1-1",  # not encoded
        "%%%%",
        _b64("v2:1-1"),
        _b64("1-1"),
        _b64("v1:"),
        _b64("v1:abc"),
        _b64("v1:1-"),
        _b64("v1:-1"),
        _b64("v1:1-1-1"),
        _b64(f"v1:{1 << 64}-0"),
        _b64("v1:\uff11-1"),  # a non-ASCII digit
        "A" * (tokens.MAX_TOKEN_CHARS + 1),
    ],
)
def test_malformed_tokens_name_the_field(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        tokens.decode(token)
    assert caught.value.field == "resume_token"


def test_stream_ids_compare_numerically() -> None:
    assert parse_stream_id("10-0") > parse_stream_id("9-99")
    assert parse_stream_id("5-10") > parse_stream_id("5-9")


async def test_a_malformed_token_fails_before_anything_is_held() -> None:
    # The hub is never touched: validation comes first.
    request = scheduler_pb2.WatchTasksRequest(resume_token="garbage!")
    with pytest.raises(InvalidArgument):
        await watch_tasks(None, "owner", request, None)  # type: ignore[arg-type]


# -- subscriber --------------------------------------------------------------------------------------
def _queued(ms: int, after: str = "0-0") -> EncodedEvent:
    task = S.Task(id=f"task-{ms}", status=S.TASK_STATUS_QUEUED, version=ms)
    return wire.encode_event(StoredEvent(f"{ms}-0", after, TaskChange("owner", task, 0)), S.TaskStats(queued=ms))


def _live(limit: int = 3, at: int = 1) -> Subscriber:
    subscriber = Subscriber("owner", limit)
    subscriber.begin_sync()
    assert subscriber.go_live(parse_stream_id(f"{at}-0"))
    return subscriber


def test_events_that_follow_on_are_queued_in_order_and_repeats_ignored() -> None:
    subscriber = _live()
    subscriber.offer(_queued(2), parse_stream_id("1-0"))
    subscriber.offer(_queued(3), parse_stream_id("2-0"))
    subscriber.offer(_queued(2), parse_stream_id("1-0"))
    assert [q.entry_id for q in subscriber.pending] == ["2-0", "3-0"]
    assert subscriber.wake.is_set()
    assert not subscriber.needs_replay and not subscriber.needs_snapshot


def test_a_gap_drops_the_queue_and_asks_for_a_replay() -> None:
    subscriber = _live()
    subscriber.offer(_queued(2), parse_stream_id("1-0"))
    subscriber.offer(_queued(4), parse_stream_id("3-0"))  # 3-0 never arrived
    assert subscriber.needs_replay and not subscriber.pending and subscriber.cursor is None


def test_an_overflow_drops_the_queue_and_asks_for_a_snapshot() -> None:
    subscriber = _live(limit=2)
    for ms in range(2, 6):
        subscriber.offer(_queued(ms), parse_stream_id(f"{ms - 1}-0"))
    assert subscriber.needs_snapshot and not subscriber.pending
    # Nothing more is queued until the call has read history again.
    subscriber.offer(_queued(6), parse_stream_id("5-0"))
    assert not subscriber.pending


def test_a_history_read_overtaken_by_the_feed_is_not_trusted() -> None:
    subscriber = Subscriber("owner", 10)
    subscriber.begin_sync()
    subscriber.offer(_queued(5), parse_stream_id("4-0"))
    assert not subscriber.pending
    assert not subscriber.go_live(parse_stream_id("4-0")), "the read ended before an offered event"
    assert subscriber.go_live(parse_stream_id("5-0"))
    subscriber.offer(_queued(6), parse_stream_id("5-0"))
    assert [q.entry_id for q in subscriber.pending] == ["6-0"]


def test_resync_turns_a_live_subscriber_back_to_history() -> None:
    subscriber = _live()
    subscriber.offer(_queued(2), parse_stream_id("1-0"))
    subscriber.resync()
    assert subscriber.needs_replay and not subscriber.pending


# -- encoding -------------------------------------------------------------------------------------------
def test_an_event_alone_is_a_whole_message_naming_its_position() -> None:
    message = scheduler_pb2.WatchTasksResponse.FromString(wire.batch([_queued(7)]))
    assert message.WhichOneof("kind") == "event"
    assert message.resume_token == message.event.resume_token == tokens.encode("7-0")
    assert message.event.task.id == "task-7" and message.event.stats.queued == 7


def test_a_batch_joined_from_encoded_events_is_the_message_protobuf_would_build() -> None:
    events = [_queued(ms) for ms in (3, 4, 5)]
    joined = scheduler_pb2.WatchTasksResponse.FromString(wire.batch(events))
    built = scheduler_pb2.WatchTasksResponse(
        resume_token=tokens.encode("5-0"),
        events=scheduler_pb2.TaskEventBatch(
            events=[scheduler_pb2.WatchTasksResponse.FromString(e.alone).event for e in events]
        ),
    )
    assert joined == built
    assert [e.resume_token for e in joined.events.events] == [tokens.encode(f"{ms}-0") for ms in (3, 4, 5)]


def test_long_fields_get_multi_byte_lengths() -> None:
    big = S.Task(id="big", name="n" * 200, error="x" * 70_000)
    event = wire.encode_event(StoredEvent("9-0", "8-0", TaskChange("owner", big, 0)), None)
    joined = scheduler_pb2.WatchTasksResponse.FromString(wire.batch([event, _queued(10)]))
    assert [e.task.id for e in joined.events.events] == ["big", "task-10"]
    sent = joined.events.events[0].task
    assert sent.name == big.name and sent.summary
    # The event carries the error's first KiB: a summary's strings are bounded.
    assert sent.error == "x" * (task_summary.ERROR_BYTES - len(task_summary.CUT_MARK.encode())) + task_summary.CUT_MARK


# -- stats ---------------------------------------------------------------------------------------------
def _change(status: int, previous: int, deleted: bool = False) -> TaskChange:
    return TaskChange("owner", S.Task(status=status), previous, deleted)


def test_stats_along_undo_later_changes_including_deletions() -> None:
    changes = [
        _change(S.TASK_STATUS_QUEUED, 0),
        _change(S.TASK_STATUS_RUNNING, S.TASK_STATUS_QUEUED),
        _change(S.TASK_STATUS_SUCCEEDED, S.TASK_STATUS_RUNNING),
        _change(S.TASK_STATUS_SUCCEEDED, S.TASK_STATUS_SUCCEEDED, deleted=True),
    ]
    final = {S.TASK_STATUS_FAILED: 2}
    along = stats_along(Counter(final), changes)
    assert along == [
        S.TaskStats(active=1, queued=1, failed=2),
        S.TaskStats(active=1, running=1, failed=2),
        S.TaskStats(succeeded=1, failed=2),
        S.TaskStats(failed=2),
    ]


def test_stats_along_never_go_negative() -> None:
    # The count already includes a later change whose event is not in this read.
    along = stats_along(Counter({S.TASK_STATUS_SUCCEEDED: 1}), [_change(S.TASK_STATUS_QUEUED, 0)])
    assert along == [S.TaskStats(succeeded=1)]
    earlier = stats_along(
        Counter({S.TASK_STATUS_SUCCEEDED: 1}),
        [_change(S.TASK_STATUS_QUEUED, 0), _change(S.TASK_STATUS_RUNNING, S.TASK_STATUS_QUEUED)],
    )
    assert all(getattr(s, f) >= 0 for s in earlier for f in ("active", "queued", "running", "succeeded"))


# -- settings ------------------------------------------------------------------------------------------
def test_settings_come_from_rtask_watch_variables() -> None:
    config = load(WatchConfig, {"RTASK_WATCH_HEARTBEAT_MS": "1500", "RTASK_WATCH_QUEUE_LIMIT": "64"})
    assert config.heartbeat_ms == 1500 and config.queue_limit == 64
    assert config.snapshot_limit == WatchConfig().snapshot_limit


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_bad_settings_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="RTASK_WATCH_HEARTBEAT_MS"):
        load(WatchConfig, {"RTASK_WATCH_HEARTBEAT_MS": value})


async def test_a_call_quiet_for_a_whole_tick_owes_a_heartbeat() -> None:
    subscriber = _live()
    subscriber.spoke()
    subscriber.tick()
    assert not subscriber.heartbeat_due and not subscriber.wake.is_set(), "it spoke during this tick"
    subscriber.tick()
    assert subscriber.heartbeat_due and subscriber.wake.is_set()
    subscriber.spoke()
    assert not subscriber.heartbeat_due


async def test_a_subscriber_wakes_its_call() -> None:
    subscriber = _live()
    waiter = asyncio.create_task(subscriber.wake.wait())
    subscriber.notify_workers()
    await waiter
    assert subscriber.workers_changed


def test_envoy_lets_a_quiet_watch_live_through_several_heartbeats() -> None:
    """The edge cuts a stream silent for its idle timeout; heartbeats must come well within it."""
    edge = compose_config()
    assert edge.stream_idle_timeout_s * 1000 >= 3 * WatchConfig().heartbeat_ms
    watch = [s for s in route_specs(edge) if s.path == "/resilienttask.v1.SchedulerService/WatchTasks"]
    assert len(watch) == 1 and watch[0].kind.value == "server_stream", "stream treatment: no overall timeout"
