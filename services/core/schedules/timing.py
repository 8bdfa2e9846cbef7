"""When a schedule fires: the slots of a cron expression in a time zone, or of a fixed interval.

Cron times come from cronsim, which handles daylight-saving changes as Debian's cron does: a wall time that a
spring-forward skips fires once, at the first valid time after the gap (02:30 on a night that jumps from 02:00
to 03:00 fires at 03:00); a wall time a fall-back repeats fires once, at its first occurrence, for a job on a
fixed time (30 2 * * *), while a job that names every minute or hour of the repeated hour (*/30 * * * *) fires
in both, since those are different instants. Every slot is handled as an instant in UTC; the time zone only
says which instants the expression names.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from resilienttask.limits import field_limits
from resilienttask.v1 import schedule_pb2

CRON_FIELDS = 5
MAX_CRON_CHARS = field_limits(schedule_pb2.CronTiming, "expression").max_chars or 0
# Missed cron slots counted one by one at most this many (a per-minute expression down for a week); beyond, the
# newest are found from the end and the count says at least this many.
MAX_COUNTED_SLOTS = 10_000
_BEFORE = timedelta(microseconds=1)


class TimingError(ValueError):
    """The expression or the time zone is not one this module can use; the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def zone(name: str) -> ZoneInfo:
    """The IANA time zone of that name; empty means UTC."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a name that is a path of a directory
        raise TimingError("time_zone", f"unknown time zone {name[:64]!r} (an IANA name, e.g. Europe/Paris)") from exc


def check_cron(expression: str) -> str:
    """The expression, if it is 5 fields cronsim accepts that name at least one future time."""
    if len(expression) > MAX_CRON_CHARS:
        raise TimingError("expression", f"must be at most {MAX_CRON_CHARS} characters")
    fields = expression.split()
    if len(fields) != CRON_FIELDS:
        raise TimingError("expression", "must have 5 fields: minute hour day-of-month month day-of-week")
    try:
        next(CronSim(expression, datetime.now(UTC)))
    except (CronSimError, StopIteration, ValueError) as exc:
        raise TimingError("expression", f"invalid cron expression: {exc}") from exc
    return " ".join(fields)


@dataclass(frozen=True)
class CronTiming:
    expression: str
    tz: ZoneInfo

    def _after(self, start: datetime) -> CronSim:
        return CronSim(self.expression, start.astimezone(self.tz))

    def next_after(self, moment: datetime) -> datetime | None:
        try:
            return next(self._after(moment)).astimezone(UTC)
        except StopIteration:
            return None

    def slots(self, start: datetime, end: datetime, keep: int) -> tuple[list[datetime], int]:
        newest: deque[datetime] = deque(maxlen=keep)
        count = 0
        for local in self._after(start - _BEFORE):
            slot = local.astimezone(UTC)
            if slot > end:
                return list(newest), count
            newest.append(slot)
            count += 1
            if count >= MAX_COUNTED_SLOTS:
                break
        # Too many to count: the newest ones, walking back from the end.
        back: list[datetime] = []
        for local in CronSim(self.expression, (end + _BEFORE).astimezone(self.tz), reverse=True):
            slot = local.astimezone(UTC)
            if slot < start or len(back) == keep:
                break
            back.append(slot)
        return sorted(back), count


@dataclass(frozen=True)
class IntervalTiming:
    interval_ms: int
    anchor: datetime

    def _ms(self, moment: datetime) -> int:
        """Whole milliseconds from the anchor to the moment."""
        return (moment - self.anchor) // timedelta(milliseconds=1)

    def _slot(self, k: int) -> datetime:
        return self.anchor + timedelta(milliseconds=k * self.interval_ms)

    def next_after(self, moment: datetime) -> datetime | None:
        return self._slot(max(0, self._ms(moment)) // self.interval_ms + 1)

    def slots(self, start: datetime, end: datetime, keep: int) -> tuple[list[datetime], int]:
        first = max(1, -(-self._ms(start) // self.interval_ms))
        last = self._ms(end) // self.interval_ms
        if last < first:
            return [], 0
        return [self._slot(k) for k in range(max(first, last - keep + 1), last + 1)], last - first + 1


Timing = CronTiming | IntervalTiming


def upcoming(timing: Timing, start: datetime, count: int) -> list[datetime]:
    """Up to count slots from start on (start itself included when it is one)."""
    found: list[datetime] = []
    moment: datetime | None = start - _BEFORE
    while moment is not None and len(found) < count:
        moment = timing.next_after(moment)
        if moment is not None:
            found.append(moment)
    return found


def shortest_gap(timing: Timing, start: datetime, count: int = 100) -> timedelta | None:
    """The shortest time between two consecutive slots among the next `count`; None with fewer than two.

    A jitter must stay below it: a firing delayed past the next slot would make that slot look missed.
    """
    slots = upcoming(timing, start, count)
    return min((b - a for a, b in itertools.pairwise(slots)), default=None)
