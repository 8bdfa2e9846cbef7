"""Password rules, bcrypt round trips, and hashing that leaves the event loop free."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import bcrypt
import grpc
import pytest

from services.core.errors import InvalidArgument
from services.core.passwords import (
    MAX_PASSWORD_BYTES,
    MIN_PASSWORD_BYTES,
    HashQueueFull,
    PasswordHasher,
    password_bytes,
)
from tests.helpers import eventually

COST = 4


@pytest.fixture
async def hasher() -> AsyncIterator[PasswordHasher]:
    pool = PasswordHasher(COST)
    yield pool
    await pool.close()


@pytest.mark.parametrize(
    "password",
    ["", "x" * (MIN_PASSWORD_BYTES - 1), "x" * (MAX_PASSWORD_BYTES + 1), "\u00e9" * 37, "\U0001f512" * 19],
)
def test_passwords_outside_8_to_72_bytes_are_refused(password: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        password_bytes(password)
    assert caught.value.field == "password"
    assert str(caught.value).startswith("password:")


@pytest.mark.parametrize(
    "password", ["x" * MIN_PASSWORD_BYTES, "x" * MAX_PASSWORD_BYTES, "\u00e9" * 36, "pass word\x00!"]
)
def test_passwords_of_8_to_72_bytes_are_accepted_as_utf8(password: str) -> None:
    assert password_bytes(password) == password.encode("utf-8")


async def test_hash_is_bcrypt_at_the_configured_cost_and_verifies(hasher: PasswordHasher) -> None:
    hashed = await hasher.hash(b"correct horse")
    assert hashed.startswith(f"$2b${COST:02d}$")
    assert bcrypt.checkpw(b"correct horse", hashed.encode())
    assert await hasher.verify(b"correct horse", hashed)
    assert not await hasher.verify(b"correct horsE", hashed)


async def test_same_password_hashes_differently_each_time(hasher: PasswordHasher) -> None:
    assert await hasher.hash(b"same password") != await hasher.hash(b"same password")


async def test_unknown_user_never_verifies(hasher: PasswordHasher) -> None:
    assert not await hasher.verify(b"any password", None)


@pytest.mark.parametrize("stored", ["", "not-a-hash", "$2b$04$short", "caf\u00e9"])
async def test_a_stored_value_that_is_not_a_hash_never_matches(hasher: PasswordHasher, stored: str) -> None:
    assert not await hasher.verify(b"any password", stored)


async def test_hashing_runs_off_the_event_loop() -> None:
    """While a hash is computed the loop keeps running other coroutines; an on-loop hash would starve them."""
    hasher = PasswordHasher(10)
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    try:
        await hasher.hash(b"a long enough password")
        assert ticks > 0
        before = ticks
        assert not await hasher.verify(b"another password", None)
        assert ticks > before
    finally:
        done.set()
        await ticker
        await hasher.close()


async def _waiting(hasher: PasswordHasher, count: int) -> bool:
    return hasher.waiting == count


async def test_a_full_hash_queue_refuses_at_once_with_resource_exhausted() -> None:
    hasher = PasswordHasher(COST, threads=1, max_waiting=2)
    release = threading.Event()
    try:
        # One call holds the only thread, two wait for it: the queue is full.
        busy = asyncio.create_task(hasher._run(release.wait))
        waiting = [asyncio.create_task(hasher.hash(b"correct horse")) for _ in range(2)]
        await eventually(lambda: _waiting(hasher, 2))
        with pytest.raises(HashQueueFull) as refused:
            await hasher.verify(b"correct horse", None)
        assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "password hashing queue full" in str(refused.value)
        assert not busy.done() and not any(w.done() for w in waiting)  # refused while the others still wait
        release.set()
        await busy
        assert all(hashed.startswith("$2b$") for hashed in await asyncio.gather(*waiting))
        assert hasher.waiting == 0
        assert await hasher.verify(b"correct horse", await hasher.hash(b"correct horse"))  # room again
    finally:
        release.set()
        await hasher.close()


async def test_a_caller_that_gives_up_leaves_the_queue() -> None:
    hasher = PasswordHasher(COST, threads=1, max_waiting=1)
    release = threading.Event()
    try:
        busy = asyncio.create_task(hasher._run(release.wait))
        waiting = asyncio.create_task(hasher.hash(b"correct horse"))
        await eventually(lambda: _waiting(hasher, 1))
        waiting.cancel()
        await eventually(lambda: _waiting(hasher, 0))
        replacement = asyncio.create_task(hasher.hash(b"correct horse"))  # the freed place is usable
        await eventually(lambda: _waiting(hasher, 1))
        release.set()
        await busy
        assert (await replacement).startswith("$2b$")
    finally:
        release.set()
        await hasher.close()
