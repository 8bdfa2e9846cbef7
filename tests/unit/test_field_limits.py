"""The gateway's refusals are worded from the declared numbers, as they were when the numbers were written in
code (the dashboard shows the server's reason beside the input, and people read it)."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, struct_pb2

from resilienttask.limits import bytes_text, duration_text
from resilienttask.v1 import scheduler_pb2
from services.core import validation
from services.core.errors import InvalidArgument
from services.core.passwords import password_bytes


def _reason(**fields: object) -> tuple[str, str]:
    request = scheduler_pb2.SubmitTaskRequest(name="job")
    for name, value in fields.items():
        if isinstance(value, duration_pb2.Duration | struct_pb2.Struct):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    with pytest.raises(InvalidArgument) as refused:
        validation.submission(request, ["sleep"])
    return refused.value.field, refused.value.reason


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"replicas": 51}, ("replicas", "must be between 1 and 50")),
        ({"max_attempts": -1}, ("max_attempts", "must be between 1 and 10")),
        ({"name": "x" * 201}, ("name", "must be at most 200 characters")),
        ({"name": "  "}, ("name", "is required")),
        ({"workload": duration_pb2.Duration(seconds=86_400, nanos=1_000_000)}, ("workload", "must be at most 24h")),
        ({"max_runtime": duration_pb2.Duration(nanos=999_000_000)}, ("max_runtime", "must be between 1s and 24h")),
        ({"delay": duration_pb2.Duration(seconds=367 * 86_400)}, ("delay", "must be at most 366 days")),
        ({"request_id": "r" * 129}, ("request_id", "must be at most 128 characters")),
        ({"request_id": "a\nb"}, ("request_id", "must be at most 128 printable characters")),
        ({"priority": 6}, ("priority", "must be between 1 and 5")),
        (
            {"concurrency_key": "k", "concurrency_limit": 1001},
            ("concurrency_limit", "must be between 1 and 1000 with a concurrency_key"),
        ),
        (
            {"payload": struct_pb2.Struct(fields={"p": struct_pb2.Value(string_value="x" * 65_536)})},
            ("payload", "must be at most 64 KiB"),
        ),
    ],
)
def test_a_refusal_names_the_field_and_the_declared_bound(fields: dict[str, object], expected: tuple[str, str]) -> None:
    assert _reason(**fields) == expected


def test_password_bounds_are_in_bytes() -> None:
    with pytest.raises(InvalidArgument) as refused:
        password_bytes("\u00e9" * 37)
    assert (refused.value.field, refused.value.reason) == ("password", "must be 8 to 72 bytes long")


def test_bounds_read_as_people_write_them() -> None:
    assert [duration_text(ms) for ms in (1000, 3_600_000, 86_400_000, 31_622_400_000, 250, 90_000)] == [
        "1s",
        "1h",
        "24h",
        "366 days",
        "250 ms",
        "90s",
    ]
    assert (bytes_text(65_536), bytes_text(72)) == ("64 KiB", "72 bytes")
