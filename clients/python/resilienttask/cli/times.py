"""Times as people type them for `--at`: an ISO 8601 date and time, or a time of day (its next occurrence).

A time without an offset is local time (the zone given, else the machine's); "Z" or "+01:00" say otherwise.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta, tzinfo

_TIME_OF_DAY = re.compile(r"\d{1,2}:\d{2}(?::\d{2})?")
FORMS = "e.g. 2026-12-24T18:00, '2026-12-24 18:00:30+01:00', 2026-12-24T17:00Z or 18:00 (the next 18:00)"


def _localize(naive: datetime, zone: tzinfo | None) -> datetime:
    # astimezone() on a naive time applies the machine's rules for that date (daylight saving included).
    return naive.replace(tzinfo=zone) if zone is not None else naive.astimezone()


def parse_time(text: str, *, now: datetime | None = None, zone: tzinfo | None = None) -> datetime:
    """Parse a time into an aware datetime; raises ValueError naming the accepted forms."""
    value = text.strip()
    if _TIME_OF_DAY.fullmatch(value):
        hour, minute, *second = (int(part) for part in value.split(":"))
        try:
            clock = time(hour, minute, second[0] if second else 0)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a time of day; {FORMS}") from exc
        current = now or datetime.now().astimezone(zone)
        today = current.astimezone(zone).date()
        moment = _localize(datetime.combine(today, clock), zone)
        if moment <= current:
            moment = _localize(datetime.combine(today + timedelta(days=1), clock), zone)
        return moment
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a time; {FORMS}") from exc
    if "T" not in value.upper() and " " not in value:
        raise ValueError(f"{text!r} has no time of day; {FORMS}")
    return parsed if parsed.tzinfo is not None else _localize(parsed, zone)
