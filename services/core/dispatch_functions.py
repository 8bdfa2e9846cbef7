"""The server-side function library of the dispatch streams: a worker's ordered non-blocking read in one round trip.

A worker's read takes the priority levels most urgent first, each level's share lane before its surplus lane
(services/worker/consumer.py), and goes down a lane only while the lanes above it are empty. Done command by
command that is one round trip per lane passed, up to ten for a kind's five levels; the library's function does
the same reads inside Valkey, in the order the worker gives, and stops as soon as the worker's count is taken.

It is a Valkey FUNCTION, not a script sent with EVAL: the workers' Redis user may then run only what the operator
loaded (`fcall`, never `eval` or `function load`), and the commands inside are checked against that user's ACL
like any other (its key patterns still decide which streams it may read). It is loaded once per server (on a
cluster on every primary; replicas get it by replication) by what provisions Valkey as the operator: the local
stack, `rtask-redis-init --load-functions` (compose, Kubernetes), the test fixtures. Valkey keeps functions in its
AOF and RDB like data.

The library's name carries its version, and so do its functions' names (function names are global on a server):
a new version is loaded beside the old one, so workers of both versions read during an upgrade. A worker that
finds no function (an upgrade whose operator has not loaded the library yet) reads lane by lane as before.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

LIBRARY = "rtask_dispatch_v1"
# FCALL READ_FUNCTION <n> <streams...> <group> <consumer> <count> <divisor> <lane size>
READ_FUNCTION = f"{LIBRARY}_read"

# KEYS: the streams in reading order, in lanes of `lane size` consecutive streams (a lane: the streams one
# XREADGROUP of the worker's per-lane read names together). ARGV: the consumer group, the consumer, how many
# entries to take in all, the divisor of what is still wanted (each stream of a lane is asked for
# ceil(wanted / divisor): the kind's shards share a read) and the lane size.
#
# A lane is read again while one of its streams gave all it was asked for (it may hold more), and the next lane
# only once none did: no entry of a lower lane is taken while a higher one still has some. Read with COUNT and no
# BLOCK: a function never blocks. Returns what each XREADGROUP gave, in order: {stream, {{id, {field, value,
# ...}}, ...}} pairs, a stream appearing once per read of its lane that found entries.
#
# 'allow-oom': XREADGROUP itself is allowed while Valkey is out of memory (the workers then drain the queue,
# which frees memory); a function that may write is refused in that state unless flagged so.
LIBRARY_CODE = f"""#!lua name={LIBRARY}

local function read(keys, args)
  local group, consumer = args[1], args[2]
  local count, divisor, lane_size = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
  -- Checked, as any caller of the workers' user could pass anything: a lane of 0 streams would loop forever.
  if not (count and divisor and lane_size) or count < 0 or divisor < 1 or lane_size < 1 then
    return redis.error_reply('ERR count >= 0, divisor >= 1 and lane size >= 1 expected')
  end
  local taken, out = 0, {{}}
  for first = 1, #keys, lane_size do
    if taken >= count then break end
    local command = {{'XREADGROUP', 'GROUP', group, consumer, 'COUNT', 0, 'STREAMS'}}
    local last = math.min(first + lane_size - 1, #keys)
    for i = first, last do command[#command + 1] = keys[i] end
    for _ = first, last do command[#command + 1] = '>' end
    while taken < count do
      local asked = math.ceil((count - taken) / divisor)
      command[6] = asked
      local reply = redis.call(unpack(command))
      local full = false
      if reply then
        for _, pair in ipairs(reply) do
          local n = #pair[2]
          if n > 0 then
            out[#out + 1] = pair
            taken = taken + n
          end
          if n >= asked then full = true end
        end
      end
      if not full then break end
    end
  end
  return out
end

redis.register_function{{function_name = '{READ_FUNCTION}', callback = read, flags = {{'allow-oom'}}}}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_reply_pairs(reply: Any) -> list[tuple[str, Any]]:
    """(stream, (entry id, fields)) pairs of the function's reply, the shape of redis-py's XREADGROUP entries."""
    pairs: list[tuple[str, Any]] = []
    for stream, entries in reply or []:
        name = _text(stream)
        for entry_id, fields in entries:
            pairs.append((name, (entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))))
    return pairs


def is_unavailable(error: BaseException) -> bool:
    """Whether an FCALL failed because the function cannot be run here: not loaded on that server, or the caller's
    user not allowed FCALL yet (its ACL not reloaded). Anything else is a failure of the read itself."""
    message = str(error)
    return message.startswith("Function not found") or ("no permissions to run the 'fcall' command" in message)


def load_library(client: redis.Redis | RedisCluster) -> None:
    """Load (or replace) the library as the operator: on one server, or through a cluster client on every primary
    (redis-py sends FUNCTION LOAD to all of them); replicas get it from their primary."""
    client.function_load(LIBRARY_CODE, replace=True)
