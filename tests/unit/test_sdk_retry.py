"""How the SDK paces retries and stream reconnects: full jitter under capped exponential ceilings, and when a
broken watch or followed log gives up."""

from __future__ import annotations

import random
import time
from itertools import islice

import grpc
import pytest

from resilienttask import _io_async, _io_sync
from resilienttask._retry import Reconnect, RetryPolicy
from resilienttask.errors import DeadlineExceeded, NotFound, Unavailable


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="from the test")


def test_ceilings_double_from_the_initial_backoff_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    assert list(islice(policy.ceilings(), 6)) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert list(islice(RetryPolicy(initial_backoff_s=0, max_backoff_s=1.0).ceilings(), 2)) == [0, 1.0]


def test_each_pause_is_drawn_between_zero_and_its_ceiling() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(7)
    runs = [list(islice(policy.backoffs(rng), 8)) for _ in range(200)]
    ceilings = list(islice(policy.ceilings(), 8))
    for run in runs:
        assert all(0 <= pause <= ceiling for pause, ceiling in zip(run, ceilings, strict=True))
    # Clients cut off together come back spread over the whole range, not together at the ceiling.
    firsts_at_cap = [run[-1] for run in runs]
    assert min(firsts_at_cap) < 0.25 and max(firsts_at_cap) > 0.75
    assert len({round(pause, 6) for pause in firsts_at_cap}) > 150


def test_a_failure_a_reconnect_cannot_cure_is_raised_at_once() -> None:
    reconnect = Reconnect(RetryPolicy(), "watch")
    with pytest.raises(NotFound):
        reconnect.pause_after(_error(grpc.StatusCode.NOT_FOUND))
    assert reconnect.reconnects == 0


def test_a_stream_that_never_worked_gets_the_policys_attempts() -> None:
    reconnect = Reconnect(RetryPolicy(attempts=3, initial_backoff_s=0.1, max_backoff_s=0.4), "log stream")
    pauses = [reconnect.pause_after(_error(grpc.StatusCode.UNAVAILABLE)) for _ in range(2)]
    assert 0 <= pauses[0] <= 0.1 and 0 <= pauses[1] <= 0.2
    with pytest.raises(Unavailable):
        reconnect.pause_after(_error(grpc.StatusCode.UNAVAILABLE))
    assert reconnect.reconnects == 3


def test_a_message_starts_the_pauses_over() -> None:
    reconnect = Reconnect(RetryPolicy(attempts=2, initial_backoff_s=0.1, max_backoff_s=2.0), "watch")
    reconnect.heard()
    for _ in range(5):  # once connected, failures are not counted against the attempts
        reconnect.pause_after(_error(grpc.StatusCode.INTERNAL))
    reconnect.heard()
    assert reconnect.pause_after(None) <= 0.1, "a clean end after a message waits at most the first ceiling"


def test_a_deadline_ends_the_stream_and_bounds_the_pause() -> None:
    reconnect = Reconnect(RetryPolicy(initial_backoff_s=5, max_backoff_s=5), "watch", deadline=time.monotonic() + 60)
    assert reconnect.pause_after(_error(grpc.StatusCode.UNAVAILABLE)) <= 60
    with pytest.raises(DeadlineExceeded):
        reconnect.pause_after(_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    passed = Reconnect(RetryPolicy(initial_backoff_s=5, max_backoff_s=5), "watch", deadline=time.monotonic() - 1)
    assert passed.pause_after(_error(grpc.StatusCode.UNAVAILABLE)) == 0


def test_both_sides_of_the_generated_client_offer_the_same_names() -> None:
    """client.py is aio.py with _io_async replaced by _io_sync: each name must exist on both sides."""
    for name in _io_async.__all__:
        assert hasattr(_io_async, name) and hasattr(_io_sync, name), name
