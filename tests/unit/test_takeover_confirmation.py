"""A holder's release is believed only on a second look (services/scheduler/takeover.py): a record rolled back by
a failover that lost writes must not hand a live holder's task to another worker."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from services.scheduler.takeover import STALE_AFTER_MIN_S, ConfirmedReleases

HELD = {"worker-a": [("task-1", 100.0), ("task-2", 101.0)]}


class Record:
    """What the registry says, as the test sets it, and a clock the test moves."""

    def __init__(self) -> None:
        self.released: set[str] = set()
        self.now = 0.0

    async def check(self, held: Mapping[str, Collection[tuple[str, float]]]) -> set[str]:
        return {task for tasks in held.values() for task, _ in tasks} & self.released

    def clock(self) -> float:
        return self.now


async def test_a_release_counts_only_once_seen_again_after_the_window() -> None:
    record = Record()
    confirmed = ConfirmedReleases(record.check, 2.0, record.clock)
    record.released = {"task-1"}
    assert await confirmed(HELD) == set(), "the first look defers"
    record.now = 1.0
    assert await confirmed(HELD) == set(), "still inside the window"
    record.now = 2.0
    assert await confirmed(HELD) == {"task-1"}


async def test_a_holder_seen_alive_in_between_starts_the_wait_again() -> None:
    record = Record()
    confirmed = ConfirmedReleases(record.check, 2.0, record.clock)
    record.released = {"task-1"}
    assert await confirmed(HELD) == set()  # a rolled-back heartbeat...
    record.now, record.released = 1.0, set()
    assert await confirmed(HELD) == set()  # ...recorded again
    record.now, record.released = 2.5, {"task-1"}
    assert await confirmed(HELD) == set(), "a new sighting waits its own window"
    record.now = 4.5
    assert await confirmed(HELD) == {"task-1"}


async def test_a_later_attempt_of_the_same_task_waits_its_own_window() -> None:
    record = Record()
    confirmed = ConfirmedReleases(record.check, 2.0, record.clock)
    record.released = {"task-1"}
    assert await confirmed(HELD) == set()
    record.now = 2.0
    assert await confirmed({"worker-b": [("task-1", 150.0)]}) == set()


async def test_no_window_believes_the_first_look_and_old_sightings_are_forgotten() -> None:
    record = Record()
    record.released = {"task-1"}
    assert await ConfirmedReleases(record.check, 0, record.clock)(HELD) == {"task-1"}
    confirmed = ConfirmedReleases(record.check, 1.0, record.clock)
    assert await confirmed(HELD) == set()
    record.now = STALE_AFTER_MIN_S + 1.0
    assert await confirmed({"worker-b": [("task-9", 0.0)]}) == set()
    assert await confirmed(HELD) == set(), "a sighting nobody asked about for long is forgotten, not confirmed"


async def test_a_stale_first_sighting_does_not_confirm_a_later_one() -> None:
    record = Record()
    confirmed = ConfirmedReleases(record.check, 1.0, record.clock)
    record.released = {"task-1"}
    assert await confirmed(HELD) == set()  # seen once, then nobody asks for a long while
    record.now = STALE_AFTER_MIN_S + 0.5
    assert await confirmed(HELD) == set(), "an old first look does not stand for the time in between"
    record.now += 1.0
    assert await confirmed(HELD) == {"task-1"}


async def test_a_slow_read_does_not_count_as_time_the_holder_stayed_silent() -> None:
    record = Record()
    read_s = [0.0]

    async def slow_check(held: Mapping[str, Collection[tuple[str, float]]]) -> set[str]:
        answer = await record.check(held)
        record.now += read_s[0]  # the read itself took this long
        return answer

    confirmed = ConfirmedReleases(slow_check, 2.0, record.clock)
    record.released = {"task-1"}
    assert await confirmed(HELD) == set()  # first seen at 0
    record.now, read_s[0] = 1.0, 1.5
    assert await confirmed(HELD) == set(), "asked 1 s after the first look: what it read may be that old"
    record.now, read_s[0] = 2.0, 0.0
    assert await confirmed(HELD) == {"task-1"}
