"""Child processes of the local stack: started in their own process group, logs prefixed and kept on disk."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal as signals
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

# util-linux's setpriv (Linux only): it sets the parent-death signal and the user, then execs the program in
# place. Doing either in the child ourselves (a preexec function, subprocess's user=) needs a plain fork() of the
# launcher, and a fork of a process running gRPC's threads could kill the child before its exec (seen as a service
# whose log held only gRPC's "epoll_wait error: Bad file descriptor" from the forked copy); without them
# subprocess uses vfork, which runs nothing of the parent in the child.
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


def _can_follow_parent() -> bool:
    """The parent-death signal follows the thread that starts the child: only a child of the main thread (the
    launcher's own starts) may have it, or a child started from a worker thread would die with that thread."""
    return _SETPRIV is not None and threading.current_thread() is threading.main_thread()


def _privileges(follow: bool, user: str | None) -> list[str]:
    """setpriv's options for a child: SIGTERM when the launcher dies, even by SIGKILL (so no process of a killed
    stack is left holding its ports), and the user to run as."""
    options = ["--pdeathsig", "TERM"] if follow else []
    if user is not None:
        account = pwd.getpwnam(user)
        options += [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]
    return options


# The lines a service prints once it listens (services.core.server, services.core.metrics): the launcher
# learns each port from its process instead of choosing one that another process could take first.
_ANNOUNCEMENTS = {"port": b"READY port=", "metrics": b"METRICS address="}


class ManagedProcess:
    """One child process whose output goes to a log file and, prefixed, to the console."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        echo: IO[str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = dict(env) if env is not None else dict(os.environ)
        self.echo = echo
        self.user = user
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        # What the process announced on its output ("READY port=N", "METRICS address=host:port"), by word.
        self.announced: dict[str, str] = {}
        self._announcement = threading.Condition()

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv, user = self.argv, self.user
        if _SETPRIV is not None and (options := _privileges(_can_follow_parent(), user)):
            argv, user = [_SETPRIV, *options, "--", *argv], None
        self.proc = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own group: a Ctrl-C reaches the launcher only, which stops us in order
            user=user,
            cwd=self.cwd,
        )
        self._pump = threading.Thread(target=self._copy_output, name=f"log-{self.name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout, self.log_path.open("ab") as log_file:
            try:
                self._copy_lines(log_file)
            finally:
                with self._announcement:  # no more to come: a waiter for an announcement stops waiting
                    self._announcement.notify_all()

    def _copy_lines(self, log_file: IO[bytes]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self._note_announcement(line)
            log_file.write(line)
            log_file.flush()
            if self.echo is not None:
                with contextlib.suppress(ValueError, OSError):
                    self.echo.write(f"{self.name:<12} | {line.decode(errors='replace')}")
                    self.echo.flush()

    def _note_announcement(self, line: bytes) -> None:
        for word, prefix in _ANNOUNCEMENTS.items():
            if line.startswith(prefix):
                with self._announcement:
                    self.announced[word] = line[len(prefix) :].strip().decode(errors="replace")
                    self._announcement.notify_all()

    def wait_announced(self, word: str, timeout_s: float) -> str | None:
        """The value the process announced for `word` ("port", "metrics"); None if it exited or took too long."""
        with self._announcement:
            self._announcement.wait_for(lambda: word in self.announced or self._output_ended(), timeout_s)
            return self.announced.get(word)

    def _output_ended(self) -> bool:
        return self._pump is None or not self._pump.is_alive()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group at once (used to simulate a crash)."""
        self.signal(signals.SIGKILL)
        self.wait(5)

    def wait(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        if self._pump is not None:
            self._pump.join(2)
        return code

    def stop(self, grace_s: float = 10.0, sig: int = signals.SIGTERM) -> None:
        """Ask politely, then kill the group if it does not exit within the grace period."""
        if not self.alive():
            self.wait(1)
            return
        self.signal(sig)
        if self.wait(grace_s) is None:
            print(f"{self.name} did not stop within {grace_s}s; killing", file=sys.stderr)
            self.kill()
