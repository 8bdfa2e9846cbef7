"""The CLI's filter options: past times for --since/--until, the conditions they build, and the bulk verbs'
refusals made before any call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from resilienttask.cli.app import cli
from resilienttask.cli.filters import Selection, parse_past_time
from resilienttask.search import TaskFilter

NOW = datetime(2026, 12, 6, 15, 30, tzinfo=UTC)


def test_past_times_people_type() -> None:
    assert parse_past_time("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_past_time("2026-12-01T10:00Z", now=NOW) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    local = parse_past_time("2026-12-01", now=NOW)
    assert local.tzinfo is not None and (local.year, local.month, local.day, local.hour) == (2026, 12, 1, 0)
    latest = parse_past_time("23:59", now=NOW)
    assert latest <= NOW and NOW - latest < timedelta(days=1)
    with pytest.raises(ValueError, match="not a time"):
        parse_past_time("yesterday-ish", now=NOW)


def test_a_selection_describes_itself_for_the_prompt() -> None:
    selection = Selection(
        "b1", TaskFilter(name_contains="nightly", statuses=["failed", "timed_out"], dead_lettered=True)
    )
    assert selection.describe() == "batch b1, name contains 'nightly', status failed or timed_out, dead-lettered"
    assert Selection().empty and Selection().describe() == "every task"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bulk", "delete", "--yes"], "task ids, filter options, or --all"),
        (["bulk", "retry", "00000000-0000-0000-0000-000000000000", "--kind", "fail"], "not both"),
        (["bulk", "cancel", "--all", "00000000-0000-0000-0000-000000000000"], "not both"),
        (["ls", "--since", "yesterday-ish"], "not a time"),
        (["ls", "--status", "lost"], "Invalid value for '--status'"),
    ],
)
def test_bad_filter_arguments_exit_2_before_any_call(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, [*args, "--server", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert message in result.output
