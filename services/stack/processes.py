"""Child processes of the local stack: started in their own process group, logs prefixed and kept on disk."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal as signals
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _can_follow_parent() -> bool:
    """The parent-death signal follows the thread that forks: only a child of the main thread (the launcher's
    own starts) may have it, or a child started from a worker thread would die with that thread."""
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _end_with_parent(parent_pid: int) -> None:
    """In the child, before exec: receive SIGTERM when the launcher dies, even by SIGKILL, so no process of a
    killed stack is left holding its ports. A launcher that died before the call leaves no one to signal: go."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signals.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


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
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own group: a Ctrl-C reaches the launcher only, which stops us in order
            user=self.user,
            cwd=self.cwd,
            preexec_fn=functools.partial(_end_with_parent, os.getpid()) if _can_follow_parent() else None,
        )
        self._pump = threading.Thread(target=self._copy_output, name=f"log-{self.name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout, self.log_path.open("ab") as log_file:
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
            self._announcement.wait_for(lambda: word in self.announced or not self.alive(), timeout_s)
            return self.announced.get(word)

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
