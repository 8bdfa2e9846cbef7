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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Which processes of the stack are sampled.
PROFILED = ("scheduler-1", "gateway-1", "worker-1", "gateway-2", "worker-2")
RATE_HZ = 200


class Profiler:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.exe = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
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
    """Top functions by share of samples: self (the frame on top) and inclusive (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[_short(frames[-1])] += count
        for frame in set(map(_short, frames)):
            inclusive[frame] += count
    if total == 0:
        return {"samples": 0}

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)]

    return {"samples": total, "self_pct": shares(own), "inclusive_pct": shares(inclusive)}


def _short(frame: str) -> str:
    """'function (path/to/module.py:123)' → 'function (module.py)': lines differ, the function is what counts."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name
