"""Worker registry entries are checked on read: exactly what a scheduler writes passes, anything else is refused
with the reason named (and skipped by live_workers, tests/integration/test_redis_access.py)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest

from services.core.worker_registry import MAX_ENTRY_BYTES, MalformedEntry, WorkerInfo, parse_entry


def _raw(**changes: Any) -> bytes:
    value = asdict(WorkerInfo(id="w-1", slots=10, busy=3, kinds=["sleep", "fail"]))
    value.update(changes)
    return json.dumps(value).encode()


def test_what_a_scheduler_writes_reads_back_unchanged() -> None:
    info = WorkerInfo(id="w-1", slots=10, busy=3, kinds=["sleep", "fail"])
    assert parse_entry(b"w-1", json.dumps(asdict(info)).encode()) == info
    assert parse_entry("w-1", json.dumps(asdict(info))).to_proto().slots == 10


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "exactly the fields"),
        (json.dumps({"id": "w-1"}).encode(), "exactly the fields"),
        (_raw(extra=1), "exactly the fields"),
        (_raw(id="w-2"), "id differs"),
        (_raw(id=""), "id must be"),
        (_raw(slots="ten"), "slots must be"),
        (_raw(slots=True), "slots must be"),
        (_raw(slots=-1), "slots must be"),
        (_raw(slots=2**31), "slots must be"),
        (_raw(busy=1.5), "busy must be"),
        (_raw(kinds="abc"), "kinds must be"),
        (_raw(kinds=[f"k{i}" for i in range(1000)]), "kinds must be"),
        (_raw(kinds=["sleep", 3]), "a kind must be"),
        (_raw(kinds=["x" * 1000]), "a kind must be"),
        (_raw(last_heartbeat=float("nan")), "last_heartbeat must be a finite"),
        (_raw(last_heartbeat="now"), "last_heartbeat must be a finite"),
        (_raw(started_at=1e300), "started_at is out of range"),
        (_raw(started_at=-5), "started_at is out of range"),
        (b" " * (MAX_ENTRY_BYTES + 1), "bytes"),
    ],
)
def test_anything_else_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedEntry, match=reason):
        parse_entry(b"w-1", raw)
