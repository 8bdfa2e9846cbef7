"""What a handler's child process may see of the worker: a short list of harmless variables, no open files
but its pipes, and (when the worker runs as root) another, unprivileged user.

Handlers are user code. The worker holds the enrolment secret and the Redis credentials; a child that saw
them (in its environment, through an inherited descriptor, or by reading the worker's files or
/proc/<worker>/environ as the same user) could enrol workers or write the dispatch streams. Handlers that run
in-process (async handlers without process=True) share the worker's memory and are trusted code.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from services.core.settings import ConfigError, setting

# Variables a child gets from the worker's environment: how to find programs and libraries, and locale.
# Nothing else: secrets (RTASK_*_SECRET*, REDIS_URL, DATABASE_URL, ...) are left out by not being listed.
SAFE_VARIABLES = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        "PYTHONHASHSEED",
        "VIRTUAL_ENV",
    }
)
SAFE_PREFIXES = ("LC_",)
DEFAULT_USER = "nobody"


@dataclass(frozen=True)
class IsolationConfig:
    """How handler child processes are confined."""

    # The account children run as when the worker runs as root (a name or a numeric uid); its primary group
    # is used and supplementary groups are dropped. Ignored when the worker is not root: it cannot switch.
    run_as: str = setting(
        "RTASK_HANDLER_USER",
        DEFAULT_USER,
        "the user (name or uid) handler child processes run as when the worker runs as root",
    )
    # Extra variable names an operator chooses to pass to handlers.
    pass_env: tuple[str, ...] = setting(
        "RTASK_HANDLER_ENV",
        (),
        "names of extra variables passed to handler child processes (by default they get only `PATH`, `LANG`, "
        "`LC_*`, `TZ`, `TMPDIR` and Python's own `PYTHON*` settings)",
    )

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The child's environment: the safe variables and the operator's chosen ones, nothing else."""
        chosen = set(self.pass_env)
        return {
            name: value
            for name, value in environ.items()
            if name in SAFE_VARIABLES or name.startswith(SAFE_PREFIXES) or name in chosen
        }

    def identity(self) -> tuple[int, int] | None:
        """(uid, gid) to run children as, or None when the worker is not root (children keep its user)."""
        if os.geteuid() != 0:
            return None
        if self.run_as.isdigit():
            uid = int(self.run_as)
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = uid  # a bare uid (common in containers): its own group
        else:
            try:
                entry = pwd.getpwnam(self.run_as)
            except KeyError as exc:
                raise ConfigError(f"RTASK_HANDLER_USER: no such user {self.run_as!r}") from exc
            uid, gid = entry.pw_uid, entry.pw_gid
        if uid == 0:
            raise ConfigError("RTASK_HANDLER_USER must not be root: handlers would read the worker's secrets")
        return uid, gid
