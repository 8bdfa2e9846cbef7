"""py-spy on our service processes while a scenario runs: raw (collapsed) stacks, then the top functions.

Only with `--profile`: sampling slows the processes down, so figures of a profiled run are not reported
as results. Output: <out>/profile-<scenario>-<process>.txt (flamegraph-compatible collapsed stacks) and a
summary of the functions with the largest share of samples (self time and inclusive time).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = str(Path(__file__).resolve().parents[1])
# Which processes of the stack are sampled.
PROFILED = ("scheduler-1", "gateway-1", "worker-1", "gateway-2", "worker-2")
RATE_HZ = 200


class Profiler:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.summaries: dict[str, dict[str, Any]] = {}

    @contextmanager
    def recording(self, scenario: str, pids: Mapping[str, int]) -> Iterator[None]:
        procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for name in PROFILED:
            if name not in pids:
                continue
            path = self.out_dir / f"profile-{scenario}-{name}.txt"
            argv = [self.exe, "record", "--nonblocking", "--format", "raw", "--rate", str(RATE_HZ)]
            argv += ["--output", str(path), "--pid", str(pids[name])]
            procs[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path)
        try:
            yield
        finally:
            for name, (proc, path) in procs.items():
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if path.exists():
                    self.summaries[f"{scenario}/{name}"] = summarize(path)


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """Top functions by share of the samples in which the process was busy (not waiting in epoll or on a lock).

    self: the frame on top of the stack; inclusive: anywhere on the stack, for our code and the drivers
    (services/, resilienttask/, asyncpg, redis, grpc), which says which call paths the time goes to.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            if any(part in frame for part in OUR_PATHS):
                inclusive[frame] += count
    if busy == 0:
        return {"busy_samples": 0, "idle_samples": idle}

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / busy, 1)) for frame, n in counter.most_common(top)]

    return {"busy_samples": busy, "idle_samples": idle, "self_pct": shares(own), "inclusive_pct": shares(inclusive)}


# Frames on top of the stack of a thread that waits rather than works.
IDLE_LEAVES = (
    "EpollSelector.select",
    "select (",
    "Condition.wait",
    "Event.wait",
    "wait (threading",
    "_wait_for_tstate_lock",
)
OUR_PATHS = ("(services/", "(clients/python/resilienttask/", "(asyncpg/", "(redis/", "(grpc/")


def _short(frame: str) -> str:
    """'function (/abs/path/pkg/module.py:123)' → 'function (pkg/module.py)': the line differs, the function counts."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    if not file:
        return name
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif file.startswith(f"{REPO}/"):
        file = file[len(REPO) + 1 :]
    elif file.startswith("/"):  # the standard library
        file = "/".join(file.split("/")[-2:])
    return f"{name} ({file})"
