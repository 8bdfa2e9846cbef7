"""`rtask` for delayed tasks and schedules (the installed console script, as a subprocess) against the full
stack: submit --at/--in, retry --in, SCHEDULED in ls and stats, and every `rtask schedule` command."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import wait_until
from tests.integration import test_cli
from tests.integration.test_cli import Rtask

# The CLI tests' fixtures: a user's rtask with its own config folder (rtask), and one not logged in (anon).
anon = test_cli.anon
rtask = test_cli.rtask

UNKNOWN = "00000000-0000-0000-0000-000000000000"


def test_delayed_submit_and_retry(rtask: Rtask) -> None:
    (later,) = rtask.json("submit", "later", "--in", "10m")
    assert later["status"] == "scheduled" and later["run_at"] is not None
    at = (datetime.now(UTC) + timedelta(minutes=10)).isoformat(timespec="seconds")
    (timed,) = rtask.json("submit", "at a time", "--at", at)
    assert datetime.fromisoformat(timed["run_at"]) == datetime.fromisoformat(at)
    assert {t["id"] for t in rtask.json("ls", "--status", "scheduled")} == {later["id"], timed["id"]}
    table = rtask.run("ls").stdout
    assert "scheduled in 9m" in table or "scheduled in 10m" in table, table
    stats = rtask.run("stats").stdout.splitlines()
    assert "SCHEDULED" in stats[1] and stats[3].split()[1] == "2", stats
    assert [t["status"] for t in rtask.json("cancel", timed["id"], later["id"])] == ["cancelled"] * 2

    (soon,) = rtask.json("submit", "soon", "--in", "1s", "--workload", "100ms")
    (done,) = rtask.json("wait", soon["id"], "--timeout", "1m")
    assert done["status"] == "succeeded" and done["started_at"] >= done["run_at"] == soon["run_at"]
    (retried,) = rtask.json("retry", timed["id"], "--in", "1h")
    assert retried["status"] == "scheduled" and retried["run_at"] > done["run_at"]
    rtask.run("cancel", timed["id"])


def test_every_schedule_command(rtask: Rtask) -> None:
    created = rtask.json(
        "schedule", "create", "ticker", "--every", "1s", "--task-name", "tick", "--workload", "100ms",
        "--payload", '{"n": 1}', "--overlap", "cancel-previous", "--catchup", "all", "--catchup-limit", "3",
        "--jitter", "100ms",
    )  # fmt: skip
    assert (created["name"], created["interval_s"], created["cron"]) == ("ticker", 1.0, None)
    assert (created["overlap"], created["catchup"], created["catchup_limit"]) == ("cancel_previous", "all", 3)
    assert (created["task"]["name"], created["task"]["payload"], created["task"]["workload_s"]) == (
        "tick",
        {"n": 1},
        0.1,
    )
    assert created["jitter_s"] == 0.1 and not created["paused"]
    schedule_id = created["id"]

    def fired_once() -> dict[str, object] | None:
        found: dict[str, object] = rtask.json("schedule", "get", schedule_id)
        return found if int(found["fired"]) >= 1 else None  # type: ignore[call-overload]

    fired = wait_until(fired_once, timeout_s=30, interval_s=0.2, message="the schedule fired")
    assert fired["last_status"] is not None
    ticks = [t for t in rtask.json("ls", "--limit", "0") if t["schedule_id"] == schedule_id]
    assert ticks and ticks[0]["name"] == "tick"

    (paused,) = rtask.json("schedule", "pause", schedule_id)
    assert paused["paused"] and paused["next_runs"] == []
    table = rtask.run("schedule", "ls").stdout
    assert schedule_id in table and "every 1s" in table and "paused" in table
    (resumed,) = rtask.json("schedule", "resume", schedule_id)
    assert not resumed["paused"] and resumed["next_runs"]

    triggered = rtask.json("schedule", "trigger", schedule_id, "--request-id", "cli-now")
    assert triggered["skipped"] is False and triggered["tasks"][0]["schedule_id"] == schedule_id

    updated = rtask.json("schedule", "update", schedule_id, "--cron", "*/5 * * * *", "--tz", "Europe/Paris", "-n", "2")
    assert (updated["cron"], updated["time_zone"], updated["interval_s"]) == ("*/5 * * * *", "Europe/Paris", None)
    assert updated["task"]["replicas"] == 2 and updated["task"]["name"] == "tick", "what is not given stays"
    assert (updated["overlap"], updated["catchup_limit"]) == ("cancel_previous", 3)
    renamed = rtask.json("schedule", "update", schedule_id, "--name", "five", "--every", "1h")
    assert (renamed["name"], renamed["interval_s"], renamed["cron"]) == ("five", 3600.0, None)

    assert rtask.json("schedule", "rm", schedule_id) == {"deleted": [schedule_id]}
    assert "not found" in rtask.run("schedule", "get", schedule_id, code=4).stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "x", "--at", "tomorrow"], "is not a time"),
        (["submit", "x", "--in", "soon"], "not a duration"),
        (["submit", "x", "--at", "18:00", "--in", "5m"], "not both"),
        (["retry", UNKNOWN, "--in", "-1s"], "not a duration"),
        (["schedule", "create", "s"], "give --cron"),
        (["schedule", "create", "s", "--cron", "* * * * *", "--every", "1s"], "not both"),
        (["schedule", "create", "s", "--every", "1s", "--tz", "UTC"], "--cron schedules only"),
        (["schedule", "create", "s", "--every", "1s", "--overlap", "sometimes"], "'sometimes' is not one of"),
    ],
)
def test_bad_arguments_exit_2_before_any_call(anon: Rtask, args: list[str], message: str) -> None:
    assert message in anon.run(*args, code=2).stderr


def test_the_server_names_what_it_refuses(rtask: Rtask) -> None:
    for args, field in (
        (["submit", "x", "--at", "2020-01-01T00:00Z"], "run_at"),
        (["schedule", "create", "s", "--cron", "61 * * * *"], "cron"),
        (["schedule", "create", "s", "--cron", "0 3 * * *", "--tz", "Mars/Olympus"], "time_zone"),
        (["schedule", "create", "s", "--every", "100ms"], "interval"),
        (["schedule", "get", "not-a-uuid"], "schedule_id"),
    ):
        refused = rtask.run(*args, code=2).stderr
        # "invalid <field path> (<option>): <reason>", the field from the status details.
        assert "invalid " in refused and field in refused, (args, refused)
    assert "not found" in rtask.run("schedule", "trigger", UNKNOWN, code=4).stderr


def test_schedule_commands_need_a_login(anon: Rtask) -> None:
    assert "not logged in" in anon.run("schedule", "ls", code=3).stderr
