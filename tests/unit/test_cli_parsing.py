"""The CLI's local pieces: duration and time parsing, the token cache's file modes, address checks."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import click
import pytest

from resilienttask.cli.common import check_address
from resilienttask.cli.credentials import Credential, CredentialStore, config_dir
from resilienttask.cli.durations import format_duration, parse_duration
from resilienttask.cli.local_commands import find_data_dir
from resilienttask.cli.times import parse_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("30s", 30), ("1m", 60), ("1h30m", 5400), ("1.5h", 5400), ("90", 90), ("0", 0), ("2d", 172800)],
)
def test_durations_people_type(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "-1", "abc", "5x", "1h 30m", "m", "1.s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_durations_print_short() -> None:
    assert [format_duration(parse_duration(t)) for t in ("200ms", "30s", "90", "1h30m", "2h")] == [
        "200ms",
        "30s",
        "1m30s",
        "1h30m",
        "2h",
    ]


def test_config_folder_follows_xdg_and_the_override() -> None:
    assert config_dir({"RTASK_CONFIG_DIR": "/x/y"}) == Path("/x/y")
    assert config_dir({"XDG_CONFIG_HOME": "/cfg"}) == Path("/cfg/resilienttask")
    assert config_dir({}) == Path.home() / ".config" / "resilienttask"


def test_tokens_are_cached_per_server_readable_by_the_owner_only(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "conf")
    later = datetime.now(UTC) + timedelta(hours=1)
    store.put("a:1", Credential("a@example.com", "token-a", later))
    store.put("b:2", Credential("b@example.com", "token-b", None))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    assert store.get("a:1") == Credential("a@example.com", "token-a", later)
    assert store.get("b:2") is not None and store.get("c:3") is None
    assert store.remove("a:1") and not store.remove("a:1")
    assert store.get("a:1") is None and store.get("b:2") is not None
    assert Credential("x", "t", datetime.now(UTC) - timedelta(seconds=1)).expired


def test_a_corrupt_cache_says_what_to_do(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    store.path.write_text("{not json")
    with pytest.raises(OSError, match="log in again"):
        store.get("a:1")


@pytest.mark.parametrize("address", ["localhost:8080", "127.0.0.1:1", "[::1]:8080", "edge.example.com:443", "unix:/s"])
def test_server_addresses_accepted(address: str) -> None:
    assert check_address(None, None, address) == address


@pytest.mark.parametrize("address", ["http://localhost:8080", "localhost", "local host:1", ":8080", ""])
def test_server_addresses_refused(address: str) -> None:
    with pytest.raises(click.BadParameter):
        check_address(None, None, address)


PARIS = ZoneInfo("Europe/Paris")
# The evening before the spring-forward night (2026-03-29 02:00 → 03:00 in Paris).
EVENING = datetime(2026, 3, 28, 23, 0, tzinfo=PARIS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("23:30", datetime(2026, 3, 28, 23, 30, tzinfo=PARIS)),  # still ahead today
        ("18:00", datetime(2026, 3, 29, 18, 0, tzinfo=PARIS)),  # passed: tomorrow, at summer time
        ("9:05:30", datetime(2026, 3, 29, 9, 5, 30, tzinfo=PARIS)),
        ("23:00", datetime(2026, 3, 29, 23, 0, tzinfo=PARIS)),  # exactly now is not ahead
        ("2026-12-24T18:00", datetime(2026, 12, 24, 18, 0, tzinfo=PARIS)),
        ("2026-12-24 18:00:30+01:00", datetime(2026, 12, 24, 17, 0, 30, tzinfo=UTC)),
        ("2026-12-24T17:00Z", datetime(2026, 12, 24, 17, 0, tzinfo=UTC)),
    ],
)
def test_times_people_type(text: str, expected: datetime) -> None:
    parsed = parse_time(text, now=EVENING, zone=PARIS)
    assert parsed == expected


@pytest.mark.parametrize("text", ["", "tomorrow", "2026-12-24", "25:00", "12:61", "18h", "in 5m"])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 2026-12-24T18:00"):
        parse_time(text, now=EVENING, zone=PARIS)


def test_a_time_without_zone_is_local_time() -> None:
    parsed = parse_time("2026-07-01T12:00")
    assert parsed.tzinfo is not None
    assert parsed == datetime(2026, 7, 1, 12, 0).astimezone()
    assert parse_time("12:00") > datetime.now(UTC)


def test_the_data_folder_is_found_here_or_above(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "project" / ".rtask").mkdir(parents=True)
    deep = tmp_path / "project" / "examples" / "more"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_data_dir(None, None, None) == tmp_path / "project" / ".rtask"
    assert find_data_dir(None, None, Path("elsewhere")) == Path("elsewhere"), "a folder given wins"
    monkeypatch.chdir(tmp_path)
    assert find_data_dir(None, None, None) == Path(".rtask"), "none above: the one to create here"
