"""The local stack's Redis users: passwords generated once into the data folder, the ACL file Valkey loads, and
what each process is given to log in with.

Each password sits in its own file (mode 0600) under data_dir/redis/; a process gets the URL of its role
(user name, no password) and the path of its role's password file only. Valkey reads the ACL file, which holds
hashes: no password is ever on a command line (visible in `ps`) or in a log.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from services.core import dispatch_functions, redis_acl

REDIS_DIR = "redis"
ACL_FILE = "users.acl"


@dataclass(frozen=True)
class RedisLogin:
    """How one role reaches Redis: a URL without secrets, and the file holding the password (None: the URL
    carries whatever credentials it needs, e.g. an external server given as REDIS_URL)."""

    url: str
    password_file: Path | None = None

    def env(self) -> dict[str, str]:
        """The variables a process of this role reads (services.core.config.RedisConfig)."""
        env = {"REDIS_URL": self.url}
        if self.password_file is not None:
            env["RTASK_REDIS_PASSWORD_FILE"] = str(self.password_file)
        return env

    def url_with_password(self) -> str:
        """The URL with the password written in, for a client in the same process (tests, operators' tools)."""
        if self.password_file is None:
            return self.url
        scheme, _, rest = self.url.partition("://")
        user, _, where = rest.rpartition("@")
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"{scheme}://{user}:{password}@{where}"


@dataclass(frozen=True)
class RedisAccess:
    """The logins of every role on one server."""

    services: RedisLogin
    worker: RedisLogin
    admin: RedisLogin | None = None

    @classmethod
    def shared(cls, url: str) -> RedisAccess:
        """Every process with the one URL given (an external server whose users the stack does not manage)."""
        return cls(RedisLogin(url), RedisLogin(url))


def password_files(data_dir: Path) -> dict[str, Path]:
    """Each role's password file, generated once (mode 0600 in a 0700 folder); later starts reuse them."""
    folder = data_dir / REDIS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    files = {}
    for role in redis_acl.ROLES:
        path = folder / f"{role}.password"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
        files[role] = path
    return files


def write_acl_file(data_dir: Path, files: dict[str, Path]) -> Path:
    """(Re)write the ACL file from the password files, so the rules of this version apply at every start."""
    text = redis_acl.acl_file_text({role: path.read_text().strip() for role, path in files.items()})
    path = data_dir / REDIS_DIR / ACL_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


def logins(files: dict[str, Path], host: str, port: int, db: int = 0, *, cluster: bool = False) -> RedisAccess:
    """Each role's login on the server at host:port (with cluster: on the cluster that node belongs to)."""
    scheme = "redis+cluster" if cluster else "redis"

    def login(role: str) -> RedisLogin:
        return RedisLogin(f"{scheme}://{redis_acl.USERS[role].name}@{host}:{port}/{db}", files[role])

    return RedisAccess(login(redis_acl.SERVICES), login(redis_acl.WORKER), login(redis_acl.ADMIN))


def load_functions(admin: RedisLogin) -> None:
    """Load the dispatch function library (services.core.dispatch_functions) into one server, as the operator: what
    the workers' reads call (FCALL), which their own user may run but not load."""
    with redis.Redis.from_url(admin.url_with_password(), socket_timeout=10) as client:
        dispatch_functions.load_library(client)
