"""Who may do what in Redis: the ACL users of the services, the workers and an operator, and their ACL file.

Redis is shared by processes trusted to different degrees. Gateways and schedulers own the system's state
(PostgreSQL is theirs too), so they may use every key under our prefix, with the commands they send and no
others. Workers run code users supply: they may only consume the dispatch streams (read, claim, acknowledge,
delete their entries, create the group, run the dispatch read function the operator loaded), never add entries,
write change events, publish commands or write the worker registry. The default user is disabled: a client without
a password can do nothing.

The file holds SHA-256 hashes of the passwords, never the passwords (Valkey accepts `#<hash>`), so it may be
written where the server reads it without handing out a credential. Lists here name exactly what the code
sends (grep the redis calls in services/); a new command or key must be added here, or it is refused with
NOPERM, which the integration suite notices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from services.core import keys

SERVICES = "services"
WORKER = "worker"
ADMIN = "admin"
ROLES = (SERVICES, WORKER, ADMIN)

# What every client sends on its own: redis-py's CLIENT SETINFO on connect (refusals are ignored, but would
# be noise), the pool's PING health checks, and SELECT when a URL names another database than 0; on a cluster,
# the cluster client's reading of the slot map (CLUSTER SLOTS) and of which arguments of each command are keys
# (COMMAND, COMMAND GETKEYS), and ASKING, which follows a slot being moved.
_CONNECTION = ("ping", "client|setinfo", "select", "cluster|slots", "command", "asking")


@dataclass(frozen=True)
class AclUser:
    """One Redis user: its name, key and channel patterns, and the commands it may run."""

    name: str
    key_patterns: tuple[str, ...]
    channel_patterns: tuple[str, ...]
    commands: tuple[str, ...]

    def rule(self, password: str) -> str:
        """The user's line of an ACL file; `reset` first, so nothing from an earlier definition survives."""
        digest = hashlib.sha256(password.encode()).hexdigest()
        parts = ["user", self.name, "reset", "on", f"#{digest}"]
        parts += [f"~{pattern}" for pattern in self.key_patterns]
        parts += [f"&{pattern}" for pattern in self.channel_patterns]
        parts += ["-@all", *(command if command.startswith("+") else f"+{command}" for command in self.commands)]
        return " ".join(parts)


USERS: dict[str, AclUser] = {
    SERVICES: AclUser(
        name="rtask-services",
        # Every key and channel of ours (services/core/keys.py) and nothing else on the server.
        key_patterns=(f"{keys.PREFIX}:*",),
        channel_patterns=(f"{keys.PREFIX}:*",),
        commands=(
            *_CONNECTION,
            # Dispatch and change events are appended by Lua scripts (EVAL with the text): the commands the
            # scripts call are checked against this list and their keys against the patterns too.
            "eval",
            "xadd",
            "incr",
            "xrange",
            "xrevrange",
            "xread",
            "xgroup|create",
            # The worker registry (services/core/worker_registry.py).
            "hset",
            "hdel",
            "hgetall",
            # Whether the holders of tasks another worker asks to take over let them go (released_among).
            "hmget",
            # Seats of open watch streams, per user across gateways (services/gateway/watch/seats.py).
            "zadd",
            "zrem",
            "zremrangebyscore",
            "zcard",
            "pexpire",
            # Task logs (services/core/task_logs.py): the append script's commands besides the above (it deletes
            # without DEL: trimmed, fields removed, expired), and the gateways' reads.
            "xlen",
            "xtrim",
            "hget",
            "hincrby",
            "incrby",
            "zrange",
            "zrangebyscore",
            # The sliding windows of rate-limited kinds (services/core/rate_limits.py), read in their script
            # (zrange and incrby are listed above).
            "time",
            # Stop commands to the schedulers, pool changes to the gateways; on a cluster as sharded pub/sub
            # (services/core/channels.py).
            "publish",
            "subscribe",
            "unsubscribe",
            "spublish",
            "ssubscribe",
            "sunsubscribe",
        ),
    ),
    WORKER: AclUser(
        name="rtask-worker",
        # The dispatch streams only: no events, feed, registry or channels.
        key_patterns=keys.DISPATCH_STREAM_PATTERNS,
        channel_patterns=(),
        commands=(
            *_CONNECTION,
            "xreadgroup",
            # The ordered read of the priority levels in one round trip: the dispatch library's function, which
            # the operator loads (services/core/dispatch_functions.py). FCALL runs only loaded functions, and
            # the commands inside are checked against this user's commands and key patterns like any other; no
            # EVAL (any Lua at all) and no FUNCTION LOAD.
            "fcall",
            "xautoclaim",
            "xclaim",
            "xpending",
            "xack",
            "xdel",
            "xgroup|create",
        ),
    ),
    # For operators and tests: everything, with its own password (the services never use it).
    ADMIN: AclUser(name="rtask-admin", key_patterns=("*",), channel_patterns=("*",), commands=("@all",)),
}

# Valkey's built-in user: disabled, with no password and no rights, so an unauthenticated client is refused.
_DEFAULT_USER = "user default reset off"

MIN_PASSWORD_LENGTH = 16


def acl_file_text(passwords: Mapping[str, str]) -> str:
    """An ACL file defining every role of USERS with its password (role -> password); the default user off."""
    missing = [role for role in ROLES if not passwords.get(role)]
    if missing:
        raise ValueError(f"no Redis password for {', '.join(missing)}")
    short = [role for role in ROLES if len(passwords[role]) < MIN_PASSWORD_LENGTH]
    if short:
        raise ValueError(f"Redis passwords must be at least {MIN_PASSWORD_LENGTH} characters: {', '.join(short)}")
    lines = [_DEFAULT_USER, *(USERS[role].rule(passwords[role]) for role in ROLES)]
    return "\n".join(lines) + "\n"
