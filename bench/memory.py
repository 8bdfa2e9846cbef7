"""Resident memory (RSS) of a stack's processes: one sample at rest, the peak while a scenario runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from bench.figures import tree_rss_mib

SAMPLE_INTERVAL_S = 0.25


class MemorySampler:
    """RSS in MiB of each named process (with its children: a worker's handler processes count)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.peak: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        return {name: tree_rss_mib(pid) for name, pid in self.pids.items()}

    @contextmanager
    def running(self) -> Iterator[None]:
        """Sample every 0.25 s in a thread while the block runs; keep each process's peak."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                for name, mib in self.sample().items():
                    self.peak[name] = max(mib, self.peak.get(name, 0.0))
                stop.wait(SAMPLE_INTERVAL_S)

        thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def per_role(samples: Mapping[str, float]) -> dict[str, float]:
    """Mean RSS per role (worker, gateway, scheduler, envoy) from per-process samples."""
    roles: dict[str, list[float]] = {}
    for name, mib in samples.items():
        roles.setdefault(name.split("-")[0], []).append(mib)
    return {role: round(sum(values) / len(values), 1) for role, values in roles.items()}
