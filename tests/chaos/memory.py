"""Memory of every process of a stack, sampled over a run, and whether it keeps growing.

A process's memory is its private memory (USS) summed over it and its descendants, so PostgreSQL's backends
and a worker's handler children count with their parent. Shared pages are left out: PostgreSQL's shared
buffers fill up to their configured size as the database grows, which is a cache, not a leak.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field

from services.stack.stack import Stack

MIB = 1024 * 1024


def _private_bytes(pid: int) -> int | None:
    """Memory only this process holds (USS: private clean + dirty pages); shared pages are left out.

    None when the process is gone (it ended between being listed and being read); anything else that keeps
    /proc from answering is an error, never a zero that would read as "no memory".
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            lines = handle.readlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = [line for line in lines if line.startswith(("Private_Clean:", "Private_Dirty:"))]
    if len(fields) != 2:
        raise RuntimeError(f"/proc/{pid}/smaps_rollup has no private memory fields: {lines[:3]!r}")
    return sum(int(line.split()[1]) * 1024 for line in fields)


def _children() -> dict[int, list[int]]:
    """Every process's children, from the parent pid in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    return children


def tree_private_bytes(root: int, children: dict[int, list[int]]) -> int | None:
    """Private memory of a process and all its descendants (PostgreSQL's backends leave its process group);
    None when the root process is gone. A descendant that ended meanwhile counts for nothing."""
    own = _private_bytes(root)
    if own is None:
        return None
    total, pending = own, list(children.get(root, ()))
    while pending:
        pid = pending.pop()
        total += _private_bytes(pid) or 0
        pending.extend(children.get(pid, ()))
    return total


@dataclass
class Trend:
    name: str
    first_mib: float
    last_mib: float
    peak_mib: float
    # Growth over the steady part of the run (see MemorySampler.trends).
    steady_growth_mib: float
    steady_start_mib: float

    def growing(self, tolerance_mib: float, tolerance_ratio: float) -> bool:
        return self.steady_growth_mib > max(tolerance_mib, tolerance_ratio * self.steady_start_mib)


@dataclass
class MemorySampler:
    stack: Stack
    every_s: float
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def sample(self) -> None:
        now = time.monotonic()
        children = _children()
        for name, process in self.stack.processes.items():
            size = tree_private_bytes(process.pid, children) if process.alive() else None
            if size is None:  # the process is being restarted: no sample, rather than a zero
                continue
            self.samples.setdefault(name, []).append((now, size))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            try:
                await asyncio.wait_for(stop.wait(), self.every_s)
            except TimeoutError:
                continue

    def trends(self, warmup_ratio: float = 0.3) -> list[Trend]:
        """Per process: growth over the samples after the warm-up share of the run, as the median of their
        last third minus the median of their first third (one odd sample cannot make or hide a trend)."""
        trends = []
        for name, points in sorted(self.samples.items()):
            steady = [v / MIB for _, v in points[int(len(points) * warmup_ratio) :]]
            third = len(steady) // 3
            if third < 2:
                continue
            early, late = statistics.median(steady[:third]), statistics.median(steady[-third:])
            trends.append(
                Trend(
                    name=name,
                    first_mib=points[0][1] / MIB,
                    last_mib=points[-1][1] / MIB,
                    peak_mib=max(v for _, v in points) / MIB,
                    steady_growth_mib=late - early,
                    steady_start_mib=early,
                )
            )
        return trends
