"""How many WatchTasks streams one user holds open, across every gateway.

Each open stream holds a seat: a member of the user's sorted set in Redis, scored with the time it expires.
The gateway holding it pushes that time forward while the stream lives, so the seats of a gateway that died
lapse on their own within SEAT_TTL_MS; a seat is taken and the count checked in one script, so two streams
opened at once on two gateways cannot both take the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core import keys
from services.core.cancellation import cancel_and_wait
from services.core.errors import ResourceExhausted

log = logging.getLogger(__name__)

# A seat lapses this long after its gateway last renewed it; renewed every third of that.
SEAT_TTL_MS = 30_000
RENEW_INTERVAL_S = SEAT_TTL_MS / 3 / 1000

# KEYS[1] the user's seats; ARGV: now (ms), expiry (ms), seat id, limit, ttl (ms). 1 when taken, else 0.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


class WatchSeats:
    """The seats this gateway holds for open streams; limit 0 means no limit (and no Redis traffic)."""

    def __init__(
        self, redis: aioredis.Redis, limit: int, key: Callable[[str], str] = keys.watch_seats, what: str = "watch"
    ) -> None:
        self.redis = redis
        self.limit = limit
        # The owner's sorted set of seats: one per kind of stream, each kind with its own limit.
        self.key = key
        self.what = what
        self._held: dict[str, str] = {}  # seat id -> owner
        # The tasks of the streams holding seats: ended before the stores close, so that no seat's release opens
        # a Redis connection on a closed client, where nothing would close it.
        self._streams: set[asyncio.Task[object]] = set()

    async def close(self) -> None:
        """End every stream holding a seat here and wait until its seat is given back."""
        await cancel_and_wait(list(self._streams))

    @contextlib.asynccontextmanager
    async def seat(self, owner_id: str) -> AsyncIterator[None]:
        """Hold a seat for the duration of one stream; RESOURCE_EXHAUSTED when the user has none left."""
        if self.limit <= 0:
            yield
            return
        seat_id = uuid.uuid4().hex
        now = _now_ms()
        try:
            taken = await self.redis.eval(
                _TAKE, 1, self.key(owner_id), now, now + SEAT_TTL_MS, seat_id, self.limit, SEAT_TTL_MS
            )
        except (RedisError, OSError) as exc:
            # Redis refused the write (at maxmemory) or is away: the stream is not refused for it (it reads what
            # it can, as every call does then); it just holds no seat.
            log.warning("watch stream opened without a seat", extra={"error": repr(exc)})
            taken = None
        if taken is None:
            yield
            return
        if not taken:
            raise ResourceExhausted(
                f"{self.what} streams: at most {self.limit} open at once per user; close one (another tab or client)"
            )
        self._held[seat_id] = owner_id
        serving = asyncio.current_task()
        assert serving is not None
        self._streams.add(serving)
        try:
            yield
        finally:
            del self._held[seat_id]
            try:
                await self.redis.zrem(self.key(owner_id), seat_id)
            except (RedisError, OSError) as exc:  # the seat lapses on its own
                log.warning("watch seat left to lapse", extra={"error": repr(exc)})
            finally:
                self._streams.discard(serving)

    async def renew_forever(self) -> None:
        """Push the expiry of every seat held here forward, in one round trip per renewal."""
        while True:
            await asyncio.sleep(RENEW_INTERVAL_S)
            if not self._held:
                continue
            expiry = _now_ms() + SEAT_TTL_MS
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for seat_id, owner_id in list(self._held.items()):
                        pipe.zadd(self.key(owner_id), {seat_id: expiry}, xx=True)
                        pipe.pexpire(self.key(owner_id), SEAT_TTL_MS)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("watch seats not renewed; will retry", extra={"error": repr(exc)})
