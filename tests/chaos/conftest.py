"""A private stack for each chaos test: its own embedded PostgreSQL and Valkey, since faults kill and restart them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from services.stack.stack import Stack, StackConfig
from tests.chaos.profile import ChaosProfile, current
from tests.conftest import TEST_BCRYPT_COST
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV


@pytest.fixture(scope="session")
def chaos_profile() -> ChaosProfile:
    return current()


@pytest.fixture
def chaos_stack(
    chaos_profile: ChaosProfile, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """The full system with production timings (reclaim after 10 s of silence, 1 s heartbeats).

    Only the retry backoff is shortened, so `fail` tasks use up their attempts within the run.
    """
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("chaos"),
        edge_port=0,
        edge_tls_port=0,
        admin_port=0,
        workers=chaos_profile.workers,
        bcrypt_cost=TEST_BCRYPT_COST,
        extra_env={
            "RTASK_LOG_LEVEL": os.environ.get("RTASK_LOG_LEVEL", "INFO"),
            "RTASK_RETRY_BASE_MS": "200",
            **OPEN_LOGIN_ENV,
        },
        # Users are signed up by the dozen from one address; the login limits have tests of their own.
        auth_limits=OPEN_AUTH_LIMITS,
    )
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with Stack(config, echo=echo) as running:
        yield running
