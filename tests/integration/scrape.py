"""Scraping the services' /metrics endpoints with Prometheus's own text parser, and reading what it found."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from services.stack.stack import Stack


@dataclass(frozen=True)
class Scrape:
    """Every sample one endpoint served."""

    samples: tuple[Sample, ...]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 when there is none)."""
        return sum(s.value for s in self.matching(name, **labels))

    def matching(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and labels.items() <= s.labels.items()]

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.status == 200, url
        assert reply.headers.get_content_type() == "text/plain", reply.headers
        return str(reply.read().decode())


def scrape_now(url: str) -> Scrape:
    """Scrape from synchronous code (blocks)."""
    text = _get(url)
    return Scrape(tuple(sample for family in text_string_to_metric_families(text) for sample in family.samples))


async def scrape(url: str) -> Scrape:
    return await asyncio.to_thread(scrape_now, url)


async def scrape_role(stack: Stack, role: str) -> dict[str, Scrape]:
    """Every process of `role` (gateway, scheduler, worker) of the stack, by name."""
    names = stack.names(role)
    urls = [stack.metrics_url(name) for name in names]
    assert all(urls), f"metrics are off for some {role}: {dict(zip(names, urls, strict=True))}"
    found = await asyncio.gather(*(scrape(url) for url in urls if url is not None))
    return dict(zip(names, found, strict=True))


def total(scrapes: Iterable[Scrape], name: str, **labels: str) -> float:
    """A series summed over processes (counters of several replicas add up)."""
    return sum(s.value(name, **labels) for s in scrapes)


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on, from its socket descriptors and the kernel's socket tables."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
