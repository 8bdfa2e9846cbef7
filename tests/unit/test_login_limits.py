"""The gateway's per-email budget of login attempts: taken before the hash, given back on success, bounded."""

from __future__ import annotations

import grpc
import pytest

from services.core.config import ConfigError
from services.core.settings import load
from services.gateway.login_limits import EmailLimiter, LoginLimitsConfig, TooManyFailedLogins


class Clock:
    """A settable monotonic clock, so refills are checked without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **settings: int) -> EmailLimiter:
    return EmailLimiter(
        LoginLimitsConfig(**{"email_failures_burst": 3, "email_failure_refill_ms": 10_000, **settings}), clock
    )


def test_an_email_gets_its_burst_then_one_attempt_per_refill() -> None:
    clock = Clock()
    emails = limiter(clock)
    for _ in range(3):
        emails.take("a@example.com")
    with pytest.raises(TooManyFailedLogins) as refused:
        emails.take("a@example.com")
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(refused.value) == "too many failed logins for this email, retry in 10 s"
    emails.take("b@example.com")  # another email is untouched
    clock.now += 9.9
    with pytest.raises(TooManyFailedLogins):
        emails.take("a@example.com")
    clock.now += 0.1
    emails.take("a@example.com")
    with pytest.raises(TooManyFailedLogins):
        emails.take("a@example.com")


def test_a_successful_attempt_does_not_count() -> None:
    emails = limiter(Clock())
    for _ in range(10):
        emails.take("owner@example.com")
        emails.give_back("owner@example.com")
    assert len(emails) == 0  # a full bucket is not kept
    for _ in range(3):
        emails.take("owner@example.com")


def test_the_tracked_emails_are_bounded_and_a_refilled_bucket_is_dropped() -> None:
    clock = Clock()
    emails = limiter(clock, tracked_emails=100)
    for i in range(1000):
        emails.take(f"user-{i}@example.com")
        assert len(emails) <= 100
    clock.now += 3 * 10  # burst x refill: every bucket is full again, and forgotten
    emails.take("late@example.com")
    assert len(emails) == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [("RTASK_LOGIN_EMAIL_FAILURES_BURST", "0"), ("RTASK_LOGIN_TRACKED_EMAILS", "0"), ("RTASK_HASH_THREADS", "0")],
)
def test_bad_limits_are_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(LoginLimitsConfig, {name: value})


def test_limits_come_from_the_environment() -> None:
    assert load(LoginLimitsConfig, {}) == LoginLimitsConfig()
    config = load(LoginLimitsConfig, {"RTASK_HASH_QUEUE_MAX": "0", "RTASK_LOGIN_EMAIL_FAILURE_REFILL_MS": "500"})
    assert (config.hash_queue_max, config.email_failure_refill_ms) == (0, 500)
