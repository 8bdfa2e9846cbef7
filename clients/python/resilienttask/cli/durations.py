"""Durations as people type them: "200ms", "30s", "1m", "1h30m", "1.5h", or plain seconds ("90")."""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str) -> timedelta:
    """Parse a duration; raises ValueError naming the accepted forms."""
    value = text.strip().lower()
    if _NUMBER.fullmatch(value):
        return timedelta(seconds=float(value))
    if not _WHOLE.fullmatch(value):
        raise ValueError(f"{text!r} is not a duration; use e.g. 200ms, 30s, 1m, 1h30m or a number of seconds")
    return timedelta(seconds=sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(value)))


def format_duration(value: timedelta) -> str:
    """The shortest readable form: 200ms, 30s, 1m30s, 2h."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms < 1000:
        return f"{total_ms}ms"
    seconds = total_ms / 1000
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    frac = seconds - int(seconds)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if secs or frac or not (hours or minutes):
        parts.append(f"{secs + frac:g}s")
    return "".join(parts)
