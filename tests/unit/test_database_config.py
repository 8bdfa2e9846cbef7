"""PostgreSQL settings: every statement and every connection attempt is bounded (a stalled link never closes)."""

from __future__ import annotations

import pytest

from services.core.config import ConfigError, DatabaseConfig
from services.core.settings import load

URL = "postgresql://u@db:5432/rtask"


def test_statements_and_connects_are_bounded_by_default_and_configurable() -> None:
    config = load(DatabaseConfig, {"DATABASE_URL": URL})
    assert (config.command_timeout_ms, config.connect_timeout_ms) == (15_000, 5_000)
    config = load(
        DatabaseConfig,
        {"DATABASE_URL": URL, "RTASK_DB_COMMAND_TIMEOUT_MS": "2000", "RTASK_DB_CONNECT_TIMEOUT_MS": "1500"},
    )
    assert (config.command_timeout_ms, config.connect_timeout_ms) == (2000, 1500)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RTASK_DB_COMMAND_TIMEOUT_MS": "0"}, "command_timeout_ms"),
        ({"RTASK_DB_CONNECT_TIMEOUT_MS": "-1"}, "RTASK_DB_CONNECT_TIMEOUT_MS"),
        ({"RTASK_DB_COMMAND_TIMEOUT_MS": "soon"}, "RTASK_DB_COMMAND_TIMEOUT_MS"),
    ],
)
def test_unbounded_or_malformed_timeouts_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(DatabaseConfig, {"DATABASE_URL": URL, **env})
