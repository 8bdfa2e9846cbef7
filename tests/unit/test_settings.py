"""The one settings loader: one parser per type, errors that name the variable, every variable declared once."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.core.config import RedisConfig
from services.core.settings import (
    ConfigError,
    declarations,
    load,
    nested,
    parse_bool,
    parse_duration_ms,
    parse_duration_s,
    parse_float,
    parse_int,
    parse_list,
    setting,
)
from services.edge.config import AuthLimits
from services.gateway.app import GatewayConfig
from services.scheduler.app import SchedulerConfig
from services.worker.config import WorkerProcessConfig

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "gen-settings-table"
SECRETS = {
    "DATABASE_URL": "postgresql://u@db:5432/rtask",
    "REDIS_URL": "redis://r:6379/0",
    "RTASK_JWT_SECRET": "j" * 40,
    "RTASK_WORKER_KEY": "k" * 40,
    "RTASK_WORKER_ENROLMENT_SECRET": "e" * 40,
    "RTASK_SCHEDULER_ADDR": "127.0.0.1:1",
}


@pytest.mark.parametrize(("raw", "value"), [("10", 10), (" 10 ", 10), ("10.0", 10), ("-3", -3), ("1e3", 1000)])
def test_an_integer_is_a_whole_number_even_written_with_a_fraction(raw: str, value: int) -> None:
    assert parse_int("RTASK_X", raw) == value


@pytest.mark.parametrize("raw", ["10.5", "ten", "nan", "inf", ""])
def test_anything_else_is_refused_as_an_integer_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^RTASK_X must be an integer"):
        parse_int("RTASK_X", raw)


def test_numbers_are_finite() -> None:
    assert parse_float("RTASK_X", "0.25") == 0.25
    for raw in ("nan", "inf", "-inf", "fast"):
        with pytest.raises(ConfigError, match=r"^RTASK_X must be a (finite )?number"):
            parse_float("RTASK_X", raw)


def test_durations_are_never_negative_and_milliseconds_whole() -> None:
    assert parse_duration_ms("RTASK_X_MS", "250") == 250
    assert parse_duration_s("RTASK_X_S", "0.5") == 0.5
    with pytest.raises(ConfigError, match=r"^RTASK_X_MS must be a duration in milliseconds"):
        parse_duration_ms("RTASK_X_MS", "-1")
    with pytest.raises(ConfigError, match=r"^RTASK_X_MS must be a duration in milliseconds \(an integer"):
        parse_duration_ms("RTASK_X_MS", "0.5")
    with pytest.raises(ConfigError, match=r"^RTASK_X_S must be a duration in seconds"):
        parse_duration_s("RTASK_X_S", "-0.5")


def test_switches_and_lists() -> None:
    for raw in ("true", "1", "YES", "On"):
        assert parse_bool("RTASK_X", raw) is True
    for raw in ("false", "0", "no", "OFF"):
        assert parse_bool("RTASK_X", raw) is False
    with pytest.raises(ConfigError, match=r"^RTASK_X must be true or false, got 'maybe'"):
        parse_bool("RTASK_X", "maybe")
    assert parse_list("RTASK_X", " a , b,,c ") == ("a", "b", "c")


@dataclass(frozen=True)
class _Bucket:
    size: int = setting("_SIZE", help="size")
    every_s: float = setting("_EVERY_S", help="period")


@dataclass(frozen=True)
class _Example:
    name: str = setting("RTASK_T_NAME", help="required text")
    count: int = setting("RTASK_T_COUNT", 3, "a count")
    rate_per_s: float = setting("RTASK_T_RATE_PER_S", 1.5, "a rate, not a duration")
    secret: bytes = setting("RTASK_T_SECRET", b"default", "a secret", file_env="RTASK_T_SECRET_FILE")
    bucket: _Bucket = nested("RTASK_T_BUCKET", lambda: _Bucket(size=5, every_s=2.0), help="a bucket")
    port: int = setting("RTASK_T_PORT", 0, "a port")


def test_the_loader_parses_by_type_with_defaults_and_prefixes(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-a-file\n")
    env = {
        "RTASK_T_NAME": " n ",
        "RTASK_T_COUNT": "",  # empty: the default
        "RTASK_T_RATE_PER_S": "-2",  # a rate may be anything finite; its concern checks its own range
        "RTASK_T_SECRET_FILE": str(tmp_path / "secret"),
        "RTASK_T_BUCKET_EVERY_S": "0.25",
    }
    loaded = load(_Example, env, defaults={"RTASK_T_PORT": 50051})
    assert loaded == _Example(
        name="n", count=3, rate_per_s=-2.0, secret=b"from-a-file", bucket=_Bucket(size=5, every_s=0.25), port=50051
    )
    assert load(_Example, {**env, "RTASK_T_PORT": "7"}).port == 7
    assert load(_Example, {**env, "RTASK_T_SECRET": "inline"}).secret == b"inline"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, r"^RTASK_T_NAME is required$"),
        ({"RTASK_T_NAME": "n", "RTASK_T_COUNT": "3.5"}, r"^RTASK_T_COUNT must be an integer, got '3.5'$"),
        ({"RTASK_T_NAME": "n", "RTASK_T_BUCKET_SIZE": "big"}, r"^RTASK_T_BUCKET_SIZE must be an integer"),
        ({"RTASK_T_NAME": "n", "RTASK_T_BUCKET_EVERY_S": "-1"}, r"^RTASK_T_BUCKET_EVERY_S must be a duration"),
        ({"RTASK_T_NAME": "n", "RTASK_T_SECRET_FILE": "/nonexistent/secret"}, r"^RTASK_T_SECRET_FILE cannot be read"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable_and_the_type(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(_Example, env)


def test_declarations_list_nested_variables_with_their_prefix_and_defaults() -> None:
    rows = {d.env: d for d in declarations(_Example)}
    assert list(rows) == [
        "RTASK_T_NAME",
        "RTASK_T_COUNT",
        "RTASK_T_RATE_PER_S",
        "RTASK_T_SECRET",
        "RTASK_T_BUCKET_SIZE",
        "RTASK_T_BUCKET_EVERY_S",
        "RTASK_T_PORT",
    ]
    assert rows["RTASK_T_BUCKET_SIZE"].default == 5 and rows["RTASK_T_BUCKET_SIZE"].meaning == "a bucket: size"
    assert (rows["RTASK_T_RATE_PER_S"].type_name, rows["RTASK_T_BUCKET_EVERY_S"].type_name) == ("number", "seconds")


def _processes(env: dict[str, str]) -> tuple[Any, ...]:
    return load(GatewayConfig, env), load(SchedulerConfig, env), load(WorkerProcessConfig, env)


def test_settings_that_had_no_variable_are_settable() -> None:
    env = {
        **SECRETS,
        "RTASK_REDIS_POOL_TIMEOUT_S": "2.5",
        "RTASK_ABANDONED_INTERVAL_S": "3",
        "RTASK_SCHEDULE_MAX_SLEEP_MS": "5000",
        "RTASK_DUE_BATCH": "200",
    }
    gateway, scheduler, worker = _processes(env)
    assert gateway.redis.pool_timeout_s == scheduler.redis.pool_timeout_s == worker.redis.pool_timeout_s == 2.5
    assert scheduler.sweeps.abandoned_interval_s == 3.0
    assert (scheduler.firing.max_sleep_ms, scheduler.due.batch) == (5000, 200)


def test_the_scheduler_takes_over_after_most_of_the_workers_reclaim_time() -> None:
    """RTASK_HOLDER_SILENT_MS defaults to 80 % of the workers' own RTASK_WORKER_RECLAIM_IDLE_MS."""
    assert load(SchedulerConfig, SECRETS).takeover.holder_silent_ms == 8000
    env = {**SECRETS, "RTASK_WORKER_RECLAIM_IDLE_MS": "20000"}
    assert load(SchedulerConfig, env).takeover.holder_silent_ms == 16000
    assert load(WorkerProcessConfig, env).worker.reclaim_idle_ms == 20000
    assert load(SchedulerConfig, {**env, "RTASK_HOLDER_SILENT_MS": "900"}).takeover.holder_silent_ms == 900


def test_a_redis_password_comes_from_its_file_only(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    env = {"REDIS_URL": "redis://u@r:6379/0", "RTASK_REDIS_PASSWORD_FILE": str(tmp_path / "pw")}
    assert load(RedisConfig, env).password == "hunter2"
    with pytest.raises(ConfigError, match="give only one"):
        load(RedisConfig, {**env, "REDIS_URL": "redis://u:pw@r:6379/0"})
    (tmp_path / "pw").write_text("")
    with pytest.raises(ConfigError, match=r"^RTASK_REDIS_PASSWORD_FILE .* is empty"):
        load(RedisConfig, env)


def _table() -> tuple[dict[str, Any], dict[str, list[str]]]:
    generator = runpy.run_path(str(GENERATOR), run_name="settings_table")
    first, readers = generator["collect"]()
    return first, readers


def test_every_variable_the_services_name_is_declared() -> None:
    """A variable named in the services' code but read around the loader would be missing from the table."""
    first, _ = _table()
    declared = set(first) | {d.setting.file_env for d in first.values() if d.setting.file_env}
    prefixes = {"RTASK_LOGIN_PER_ADDRESS", "RTASK_SIGNUP_PER_ADDRESS"}
    named = {
        match
        for path in (ROOT / "services").rglob("*.py")
        for match in re.findall(r'"((?:RTASK|OTEL)_[A-Z0-9_]+|DATABASE_URL|REDIS_URL)"', path.read_text())
    }
    assert named - prefixes <= declared, named - prefixes - declared
    assert "RTASK_WORKER_CANCEL_GRACE_MS" in declared


def test_a_variable_read_by_two_concerns_means_the_same_in_both() -> None:
    seen: dict[str, Any] = {}
    generator = runpy.run_path(str(GENERATOR), run_name="settings_table")
    for _, concerns in generator["PROGRAMS"]:
        for concern in concerns:
            for declared in declarations(concern):
                kind = (declared.parse, declared.default)
                assert seen.setdefault(declared.env, kind) == kind or declared.env in ("DATABASE_URL", "REDIS_URL"), (
                    declared.env
                )


def test_the_readme_table_is_fresh() -> None:
    done = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_nothing_in_the_services_depends_on_the_test_runner() -> None:
    runner_variables = re.compile(r"PYTEST_|\bpytest\b|_called_from_test|\bCI\b")
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "services").rglob("*.py")
        if runner_variables.search(path.read_text())
    ]
    assert offenders == []


def test_a_concerns_own_check_names_its_variables() -> None:
    with pytest.raises(ConfigError, match=r"^RTASK_SIGNUP_PER_ADDRESS_\*: invalid rate limit"):
        load(AuthLimits, {"RTASK_SIGNUP_PER_ADDRESS_FILL_INTERVAL_S": "0.01"})


@pytest.mark.parametrize(
    ("argv", "variable", "value", "expected"),
    [
        (["services.gateway.main"], "RTASK_WATCH_HEARTBEAT_MS", "soon", "must be a duration in milliseconds"),
        (["services.worker.main"], "RTASK_WORKER_SLOTS", "1.5", "must be an integer"),
        (["services.stack.main", "up"], "RTASK_EDGE_REFLECTION", "perhaps", "must be true or false"),
    ],
)
def test_a_process_refuses_a_bad_value_at_start(argv: list[str], variable: str, value: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTASK_", "OTEL_"))}
    env.update({**SECRETS, variable: value})
    done = subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{variable} {expected}" in done.stderr and f"got {value!r}" in done.stderr
    assert "Traceback" not in done.stderr
