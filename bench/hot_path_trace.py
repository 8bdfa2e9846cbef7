"""Where the milliseconds of one idle task go: a loopback capture of a private stack, read hop by hop.

    .venv/bin/python -m bench.hot_path_trace run --tasks 40 --out /tmp/hot-path      # capture, then the table
    .venv/bin/python -m bench.hot_path_trace analyze /tmp/hot-path                   # the table again
    .venv/bin/python -m bench.hot_path_trace analyze /tmp/hot-path --timeline 3      # every packet of task 3

`run` starts an embedded PostgreSQL and Valkey, a stack as the latency benchmark runs it (1 scheduler,
2 gateways, 2 workers x 10 slots, Envoy, workers loading bench.handlers and connected straight to the
scheduler), `tcpdump -i lo` (needs root and
Debian's tcpdump), opens one WatchTasks stream and submits `bench.stamp` tasks one at a time with an idle
pause between them. It writes `capture.pcap` and `meta.json` (which local port belongs to which process,
each task's id, label and client-side times, the load average) to the output folder.

`analyze` reads them back. Every packet with a payload is named by its two ends' processes. A task's packets
are found by what they carry: the label (in SubmitTask, the INSERT and the handler's stamp RPUSH), the task
id as text (dispatch entry, events, the work requests and answers on the worker's Connect stream, watch
pushes) or as 16 raw bytes (asyncpg binds uuids in binary), by the first protobuf tag of the gRPC message
that carries it (a work request, not a heartbeat listing the same task), and by request/reply pairing on one
connection (PostgreSQL and Redis answer on the flow that asked). STEPS below is the path; each leg is the
gap between two consecutive steps, so a gap between a packet arriving at a process and the next one leaving
it is that process's own time (event-loop wake-up, decoding, building the next request), and a gap between
a request and its reply is the peer's. Change STEPS when the protocol changes; unmatched steps are reported,
not guessed. The path of the old protocol (unary StartTasks/FinishTasks through Envoy) is kept as the
"before" route, for captures made before it changed: `analyze --route before`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CAPTURE = "capture.pcap"
META = "meta.json"
STAMPS_DB = 5


# -- the path -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """A packet on the path: the first one after `after` (or the task's start) that matches.

    src/dst: a process name, a prefix ending in "*" ("worker*"), or "@step.src" / "@step.dst" for the
    process seen at an earlier step. needle: "label", "id" (task id text), "uuid" (text or 16 raw bytes), or
    None. text: bytes the payload must contain. grpc: the needle must be inside a gRPC message (in an HTTP/2
    DATA frame of the payload) that begins with these bytes, e.g. one protobuf field's tag, which tells a
    message kind from another kind carrying the same task id. reply: the first packet answering `after` on
    its connection (src/dst then ignored). leg: what the gap from the previous step to this one is.
    """

    name: str
    src: str
    dst: str
    leg: str
    after: str | None = None
    needle: str | None = None
    text: bytes | None = None
    reply: bool = False
    grpc: bytes | None = None


# Both routes begin with the submission and end with the watch push; they differ in between.
_SUBMIT_STEPS: tuple[Step, ...] = (
    Step("client sends SubmitTask", "client", "envoy", "client: SDK call → bytes on the socket", needle="label"),
    Step("Envoy → gateway", "envoy", "gateway*", "Envoy: JWT check, route, forward", needle="label"),
    Step("gateway → PG INSERT", "@Envoy → gateway.dst", "postgres", "gateway: decode, auth, validate", needle="label"),
    Step("PG → gateway", "", "", "PostgreSQL: the submit statement + commit", reply=True),
    Step("gateway → Valkey EVAL+XADD", "@Envoy → gateway.dst", "valkey", "gateway: rows → Task, pipeline", needle="id"),
)
_FEED_STEPS: tuple[Step, ...] = (
    Step(
        "Valkey → gateway feed (SUCCEEDED)",
        "valkey",
        "gateway*",
        "Valkey: script, wakes the gateway's blocked XREAD of the feed",
        needle="id",
    ),
    Step("gateway → PG stats", "@Valkey → gateway feed (SUCCEEDED).dst", "postgres", "gateway: route the entry"),
    Step("PG → gateway (stats)", "", "", "PostgreSQL: count by status", reply=True),
    Step(
        "gateway → Envoy push",
        "@Valkey → gateway feed (SUCCEEDED).dst",
        "envoy",
        "gateway: event → stream write",
        needle="id",
    ),
    Step("Envoy → client push", "envoy", "client", "Envoy: forward the push", needle="id"),
    Step("client sees SUCCEEDED", "", "", "client: SDK decode, watcher wakes"),
)
_SUBMIT_SIDE_STEPS: tuple[Step, ...] = (
    Step("Valkey → gateway (EVAL+XADD)", "", "", "", "gateway → Valkey EVAL+XADD", reply=True),
    Step("gateway → Envoy SubmitTask reply", "@Envoy → gateway.dst", "envoy", "", "Valkey → gateway (EVAL+XADD)", "id"),
    Step("Envoy → client SubmitTask reply", "envoy", "client", "", "gateway → Envoy SubmitTask reply", "id"),
    Step("gateway → PG mark published", "@Envoy → gateway.dst", "postgres", "", "Valkey → gateway (EVAL+XADD)"),
    Step("PG → gateway (mark published)", "", "", "", "gateway → PG mark published", reply=True),
)
_FEED_SIDE_STEPS: tuple[Step, ...] = (
    Step("Valkey → gateway feed (QUEUED)", "valkey", "gateway*", "", "gateway → Valkey EVAL+XADD", "id"),
    Step("gateway → Envoy push (QUEUED)", "gateway*", "envoy", "", "Valkey → gateway feed (QUEUED)", "id"),
    Step("Valkey → gateway feed (RUNNING)", "valkey", "gateway*", "", "scheduler → Valkey EVAL (RUNNING)", "id"),
    Step("gateway → Envoy push (RUNNING)", "gateway*", "envoy", "", "Valkey → gateway feed (RUNNING)", "id"),
)

# Main path of one task, in order; every step's `after` defaults to the previous step. Workers talk to the
# scheduler directly on one Connect stream: a start or an outcome is a ConnectRequest{work} (its gRPC message
# begins with field 4's tag, 0x22; a heartbeat listing the same task begins with 0x12), the answer a
# ConnectResponse{work} (field 2, 0x12; cancels are field 1, heartbeat acks field 3).
WORK_REQUEST = b"\x22"
WORK_RESPONSE = b"\x12"
WORKER = "@Valkey → worker XREADGROUP.dst"
SCHEDULER = "@worker → scheduler WorkRequest (start).dst"
STEPS: tuple[Step, ...] = (
    *_SUBMIT_STEPS,
    Step(
        "Valkey → worker XREADGROUP",
        "valkey",
        "worker*",
        "Valkey: event script + dispatch script (XADD), wakes the blocked XREADGROUP",
        needle="id",
    ),
    Step(
        "worker → scheduler WorkRequest (start)",
        WORKER,
        "scheduler*",
        "worker: parse entry, StartItem, work request on the stream",
        needle="id",
        grpc=WORK_REQUEST,
    ),
    Step("scheduler → PG start", SCHEDULER, "postgres", "scheduler: stream message → work processor", needle="uuid"),
    Step("PG → scheduler (start)", "", "", "PostgreSQL: the start statement", reply=True),
    Step(
        "scheduler → Valkey EVAL (RUNNING)",
        SCHEDULER,
        "valkey",
        "scheduler: rows → Task, EVAL",
        needle="id",
    ),
    Step("Valkey → scheduler (RUNNING)", "", "", "Valkey: event script", reply=True),
    Step(
        "scheduler → worker WorkResponse (start)",
        SCHEDULER,
        WORKER,
        "scheduler: answer → mailbox → stream write",
        needle="id",
        grpc=WORK_RESPONSE,
    ),
    Step("handler start (its own clock)", "", "", "worker: stream read, parse, launch the handler (asyncio task)"),
    Step("worker → Valkey stamp RPUSH", WORKER, "valkey", "handler: stamp RPUSH", needle="label", text=b"RPUSH"),
    Step("Valkey → worker (stamp)", "", "", "Valkey: RPUSH", reply=True),
    Step(
        "worker → scheduler WorkRequest (finish)",
        WORKER,
        SCHEDULER,
        "worker: handler returns, reporter, work request on the stream",
        needle="id",
        grpc=WORK_REQUEST,
    ),
    Step("scheduler → PG finish", SCHEDULER, "postgres", "scheduler: stream message → work processor", needle="uuid"),
    Step("PG → scheduler (finish)", "", "", "PostgreSQL: the finish statement", reply=True),
    Step(
        "scheduler → Valkey EVAL (SUCCEEDED)",
        SCHEDULER,
        "valkey",
        "scheduler: rows → Task, EVAL",
        needle="id",
    ),
    *_FEED_STEPS,
)

# Packets off the critical path (or beside it), each after the main-path step it names.
SIDE_STEPS: tuple[Step, ...] = (
    *_SUBMIT_SIDE_STEPS,
    Step(
        "worker → Valkey next blocking XREADGROUP",
        WORKER,
        "valkey",
        "",
        "scheduler → worker WorkResponse (start)",
        text=b"XREADGROUP",
    ),
    Step(
        "worker → scheduler HTTP/2 PING",
        WORKER,
        SCHEDULER,
        "",
        "Valkey → worker XREADGROUP",
        text=b"\x00\x00\x08\x06\x00",
    ),
    Step("client → Envoy HTTP/2 PING", "client", "envoy", "", "client sends SubmitTask", text=b"\x00\x00\x08\x06\x00"),
    Step("Valkey → scheduler (SUCCEEDED)", "", "", "", "scheduler → Valkey EVAL (SUCCEEDED)", reply=True),
    Step(
        "scheduler → worker WorkResponse (finish)",
        SCHEDULER,
        WORKER,
        "",
        "Valkey → scheduler (SUCCEEDED)",
        "id",
        grpc=WORK_RESPONSE,
    ),
    Step("worker → Valkey XACK", WORKER, "valkey", "", "scheduler → worker WorkResponse (finish)", text=b"XACK"),
    Step("Valkey → worker (XACK)", "", "", "", "worker → Valkey XACK", reply=True),
    *_FEED_SIDE_STEPS,
)

# The benchmark's five legs (bench/ours.py LATENCY_LEGS) as ranges of STEPS, for the summary.
BENCH_LEGS: tuple[tuple[str, str, str], ...] = (
    ("submit → created_at", "client sends SubmitTask", "gateway → PG INSERT"),
    ("created_at → started_at", "gateway → PG INSERT", "scheduler → PG start"),
    ("started_at → handler start", "scheduler → PG start", "handler start (its own clock)"),
    ("handler start → finished_at", "handler start (its own clock)", "scheduler → PG finish"),
    ("finished_at → SUCCEEDED seen", "scheduler → PG finish", "client sees SUCCEEDED"),
)


@dataclass(frozen=True)
class Route:
    """A protocol's path: main steps, side packets, and the benchmark's legs as ranges of the main steps."""

    steps: tuple[Step, ...]
    side_steps: tuple[Step, ...]
    bench_legs: tuple[tuple[str, str, str], ...]


# The path before the worker protocol moved onto the Connect stream (captures up to 9dcc163: unary
# StartTasks/FinishTasks through Envoy, a second non-blocking XREADGROUP after each wake-up). Kept so
# those captures can be read again: `analyze --route before`.
BEFORE_STEPS: tuple[Step, ...] = (
    *_SUBMIT_STEPS,
    Step(
        "Valkey → worker XREADGROUP",
        "valkey",
        "worker*",
        "Valkey: script + XADD, wakes the blocked XREADGROUP",
        needle="id",
    ),
    Step(
        "worker → Valkey 2nd XREADGROUP",
        "@Valkey → worker XREADGROUP.dst",
        "valkey",
        "worker: parse, 2nd read",
        text=b"XREADGROUP",
    ),
    Step("Valkey → worker (2nd read)", "", "", "Valkey: non-blocking XREADGROUP", reply=True),
    Step(
        "worker → Envoy StartTasks",
        "@Valkey → worker XREADGROUP.dst",
        "envoy",
        "worker: build StartTasks call",
        needle="id",
    ),
    Step("Envoy → scheduler StartTasks", "envoy", "scheduler*", "Envoy: route, forward", needle="id"),
    Step(
        "scheduler → PG start",
        "@Envoy → scheduler StartTasks.dst",
        "postgres",
        "scheduler: decode, auth",
        needle="uuid",
    ),
    Step("PG → scheduler (start)", "", "", "PostgreSQL: the start statement", reply=True),
    Step(
        "scheduler → Valkey EVAL (RUNNING)",
        "@Envoy → scheduler StartTasks.dst",
        "valkey",
        "scheduler: rows → Task, EVAL",
        needle="id",
    ),
    Step("Valkey → scheduler (RUNNING)", "", "", "Valkey: event script", reply=True),
    Step(
        "scheduler → Envoy StartTasks reply",
        "@Envoy → scheduler StartTasks.dst",
        "envoy",
        "scheduler: reply",
        needle="id",
    ),
    Step(
        "Envoy → worker StartTasks reply",
        "envoy",
        "@Valkey → worker XREADGROUP.dst",
        "Envoy: forward reply",
        needle="id",
    ),
    Step("handler start (its own clock)", "", "", "worker: launch the handler (asyncio task)"),
    Step(
        "worker → Valkey stamp RPUSH",
        "@Valkey → worker XREADGROUP.dst",
        "valkey",
        "handler: stamp RPUSH",
        needle="label",
        text=b"RPUSH",
    ),
    Step("Valkey → worker (stamp)", "", "", "Valkey: RPUSH", reply=True),
    Step(
        "worker → Envoy FinishTasks",
        "@Valkey → worker XREADGROUP.dst",
        "envoy",
        "worker: handler returns, FinishTasks call",
        needle="id",
    ),
    Step("Envoy → scheduler FinishTasks", "envoy", "scheduler*", "Envoy: route, forward", needle="id"),
    Step(
        "scheduler → PG finish",
        "@Envoy → scheduler FinishTasks.dst",
        "postgres",
        "scheduler: decode, auth",
        needle="uuid",
    ),
    Step("PG → scheduler (finish)", "", "", "PostgreSQL: the finish statement", reply=True),
    Step(
        "scheduler → Valkey EVAL (SUCCEEDED)",
        "@Envoy → scheduler FinishTasks.dst",
        "valkey",
        "scheduler: rows → Task, EVAL",
        needle="id",
    ),
    *_FEED_STEPS,
)

BEFORE_SIDE_STEPS: tuple[Step, ...] = (
    *_SUBMIT_SIDE_STEPS,
    Step(
        "worker → Valkey next blocking XREADGROUP",
        "@Valkey → worker XREADGROUP.dst",
        "valkey",
        "",
        "Envoy → worker StartTasks reply",
        text=b"XREADGROUP",
    ),
    Step(
        "worker → Envoy HTTP/2 PING",
        "@Valkey → worker XREADGROUP.dst",
        "envoy",
        "",
        "Envoy → worker StartTasks reply",
        text=b"\x00\x00\x08\x06\x00",
    ),
    Step("client → Envoy HTTP/2 PING", "client", "envoy", "", "client sends SubmitTask", text=b"\x00\x00\x08\x06\x00"),
    Step("Valkey → scheduler (SUCCEEDED)", "", "", "", "scheduler → Valkey EVAL (SUCCEEDED)", reply=True),
    Step("scheduler → Envoy FinishTasks reply", "scheduler*", "envoy", "", "Valkey → scheduler (SUCCEEDED)", "id"),
    Step("Envoy → worker FinishTasks reply", "envoy", "worker*", "", "scheduler → Envoy FinishTasks reply", "id"),
    Step("worker → Valkey XACK", "worker*", "valkey", "", "Envoy → worker FinishTasks reply", text=b"XACK"),
    Step("Valkey → worker (XACK)", "", "", "", "worker → Valkey XACK", reply=True),
    *_FEED_SIDE_STEPS,
)


ROUTES: dict[str, Route] = {
    "after": Route(STEPS, SIDE_STEPS, BENCH_LEGS),
    "before": Route(BEFORE_STEPS, BEFORE_SIDE_STEPS, BENCH_LEGS),
}
# Captures whose meta.json names no route were made before routes existed, on the old protocol.
UNNAMED_ROUTE = "before"


# -- pcap -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    at: float
    src: int
    dst: int
    payload: bytes


def read_pcap(path: Path) -> Iterator[Packet]:
    """TCP packets with a payload from a classic pcap of the loopback (Ethernet or Linux cooked framing)."""
    data = path.read_bytes()
    magic = data[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
    endian = order[magic]
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_len = {1: 14, 113: 16, 276: 20, 0: 4}[linktype]
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ip = frame[link_len:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            continue
        src, dst = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            yield Packet(sec + frac / (1e9 if nano else 1e6), src, dst, bytes(payload))


def grpc_messages(payload: bytes) -> Iterator[bytes]:
    """The gRPC messages in the HTTP/2 DATA frames of a payload that starts at a frame boundary (each write of
    these small messages is one segment); a message cut off by the payload's end is returned cut off."""
    offset = 0
    while offset + 9 <= len(payload):
        length = int.from_bytes(payload[offset : offset + 3], "big")
        kind, flags = payload[offset + 3], payload[offset + 4]
        body = payload[offset + 9 : offset + 9 + length]
        offset += 9 + length
        if kind != 0:  # not DATA
            continue
        if flags & 0x8 and body:  # PADDED
            body = body[1 : len(body) - body[0]]
        while len(body) >= 5 and body[0] in (0, 1):
            size = int.from_bytes(body[1:5], "big")
            yield body[5 : 5 + size]
            body = body[5 + size :]


# -- analysis -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A matched step: when, and which two processes (and which ports: the flow)."""

    at: float
    src: str
    dst: str
    flow: tuple[int, int]


class TaskTrace:
    """The packets of one task's window, named by process, and the steps found among them."""

    def __init__(self, packets: list[Packet], roles: dict[int, str], task: dict[str, Any], route: Route) -> None:
        self.packets = packets
        self.route = route
        self.roles = roles
        self.task = task
        task_id = uuid.UUID(task["task_id"])
        self.needles: dict[str, tuple[bytes, ...]] = {
            "label": (task["label"].encode(),),
            "id": (str(task_id).encode(),),
            "uuid": (str(task_id).encode(), task_id.bytes),
        }
        self.found: dict[str, Seen] = {}

    def role(self, port: int) -> str:
        return self.roles.get(port, f"port {port}")

    def _role_ok(self, pattern: str, role: str) -> bool:
        if pattern.startswith("@"):
            step, _, end = pattern[1:].rpartition(".")
            seen = self.found.get(step)
            return seen is not None and getattr(seen, end) == role
        if pattern.endswith("*"):
            return role.startswith(pattern[:-1])
        return role == pattern

    def match(self, step: Step, previous: str | None) -> Seen | None:
        anchor_name = step.after or previous
        anchor = self.found.get(anchor_name) if anchor_name else None
        if anchor_name and anchor is None:
            return None
        start = anchor.at if anchor else self.task["before"] - 0.002
        for packet in self.packets:
            if packet.at < start:
                continue
            if step.reply:
                assert anchor is not None
                if (packet.src, packet.dst) != (anchor.flow[1], anchor.flow[0]):
                    continue
            else:
                src, dst = self.role(packet.src), self.role(packet.dst)
                if not (self._role_ok(step.src, src) and self._role_ok(step.dst, dst)):
                    continue
                if step.grpc is not None:
                    prefix = step.grpc
                    regions = [m for m in grpc_messages(packet.payload) if m.startswith(prefix)]
                else:
                    regions = [packet.payload]
                if not regions:
                    continue
                if step.needle and not any(n in r for r in regions for n in self.needles[step.needle]):
                    continue
                if step.text and step.text not in packet.payload:
                    continue
            return Seen(packet.at, self.role(packet.src), self.role(packet.dst), (packet.src, packet.dst))
        return None

    def trace(self) -> None:
        previous: str | None = None
        for step in self.route.steps:
            if step.name == "handler start (its own clock)":
                at = self.task.get("handler_start")
                if at is not None and previous in self.found:
                    self.found[step.name] = Seen(at, "worker", "", (0, 0))
            elif step.name == "client sees SUCCEEDED":
                self.found[step.name] = Seen(self.task["seen"], "client", "", (0, 0))
            else:
                seen = self.match(step, previous)
                if seen is not None:
                    self.found[step.name] = seen
            previous = step.name
        for step in self.route.side_steps:
            seen = self.match(step, None)
            if seen is not None:
                self.found[step.name] = seen

    def legs(self) -> dict[str, float]:
        """ms of each main-path leg (keyed by the step it ends at) whose two ends were both found."""
        spans: dict[str, float] = {}
        steps = self.route.steps
        first = self.found.get(steps[0].name)
        if first is not None:
            spans[steps[0].name] = (first.at - self.task["before"]) * 1000
        for before, step in itertools.pairwise(steps):
            a, b = self.found.get(before.name), self.found.get(step.name)
            if a is not None and b is not None:
                spans[step.name] = (b.at - a.at) * 1000
        return spans


def load(folder: Path, route_name: str | None = None) -> tuple[list[TaskTrace], dict[str, Any], list[Packet]]:
    """A capture's tasks traced along route_name (default: the route its meta.json names)."""
    meta = json.loads((folder / META).read_text())
    meta["route"] = route_name or meta.get("route", UNNAMED_ROUTE)
    route = ROUTES[meta["route"]]
    roles = {int(port): name for port, name in meta["roles"].items()}
    # Only our processes' packets: the loopback is shared with whatever else runs on the machine.
    packets = sorted((p for p in read_pcap(folder / CAPTURE) if p.src in roles or p.dst in roles), key=lambda p: p.at)
    traces = []
    tasks = meta["tasks"]
    for i, task in enumerate(tasks):
        begin = task["before"] - 0.002
        end = min(task["seen"] + 0.05, tasks[i + 1]["before"] - 0.002 if i + 1 < len(tasks) else float("inf"))
        window = [p for p in packets if begin <= p.at <= end]
        trace = TaskTrace(window, roles, task, route)
        trace.trace()
        traces.append(trace)
    return traces, meta, packets


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def table(traces: list[TaskTrace]) -> str:
    """Markdown: p50/p90 of each leg, then the benchmark's five legs, then the side packets."""
    route = traces[0].route
    if any(t.route is not route for t in traces):
        raise ValueError("captures of different routes cannot be pooled")
    lines = [
        f"{len(traces)} tasks; legs in ms (p50 / p90 / mean / n matched); means add up to the mean total",
        "",
        "| # | step reached | leg: where the time went | p50 | p90 | mean | n |",
        "|---|---|---|---|---|---|---|",
    ]
    spans = [t.legs() for t in traces]
    for i, step in enumerate(route.steps):
        values = [s[step.name] for s in spans if step.name in s]
        leg = step.leg if i else "client: time.time() before the call → SubmitTask bytes out"
        if values:
            lines.append(
                f"| {i} | {step.name} | {leg} | {statistics.median(values):.2f} | {pct(values, 0.9):.2f} "
                f"| {statistics.fmean(values):.2f} | {len(values)} |"
            )
        else:
            lines.append(f"| {i} | {step.name} | {leg} | - | - | - | 0 |")
    holders: dict[str, list[float]] = {}
    for i, step in enumerate(route.steps):
        holder = "client" if i == 0 else step.leg.split(":")[0]
        values = [s[step.name] for s in spans if step.name in s]
        if values:
            totals_of = holders.setdefault(holder, [0.0, 0.0, 0.0])
            totals_of[0] += statistics.median(values)
            totals_of[1] += statistics.fmean(values)
            totals_of[2] += 1
    lines += ["", "| who held the work | legs | sum of p50 ms | sum of means ms |", "|---|---|---|---|"]
    for holder, (p50_sum, mean_sum, count) in sorted(holders.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {holder} | {count:.0f} | {p50_sum:.2f} | {mean_sum:.2f} |")
    lines += ["", "| bench leg (from packets) | p50 | p90 | mean | n |", "|---|---|---|---|---|"]
    for label, first, last in route.bench_legs:
        values = [(t.found[last].at - t.found[first].at) * 1000 for t in traces if first in t.found and last in t.found]
        if values:
            lines.append(
                f"| {label} | {statistics.median(values):.2f} | {pct(values, 0.9):.2f} "
                f"| {statistics.fmean(values):.2f} | {len(values)} |"
            )
    totals = [(t.task["seen"] - t.task["before"]) * 1000 for t in traces]
    lines.append(
        f"| submit call → SUCCEEDED seen (client clock) | {statistics.median(totals):.2f} | {pct(totals, 0.9):.2f} "
        f"| {statistics.fmean(totals):.2f} | {len(totals)} |"
    )
    lines += ["", "| side packet | ms after the client's submit, p50 | p90 | n |", "|---|---|---|---|"]
    for step in route.side_steps:
        values = [(t.found[step.name].at - t.task["before"]) * 1000 for t in traces if step.name in t.found]
        if values:
            lines.append(f"| {step.name} | {statistics.median(values):.2f} | {pct(values, 0.9):.2f} | {len(values)} |")
        else:
            lines.append(f"| {step.name} | - | - | 0 |")
    return "\n".join(lines)


def cpu_table(meta: dict[str, Any]) -> str:
    """CPU and run-queue wait per task of each process over the measured tasks (idle gaps included)."""
    usage = meta.get("cpu")
    if not usage:
        return ""
    n = usage["tasks"]
    idle = usage.get("idle_per_process", {})
    lines = [
        f"CPU over {usage['seconds']:.1f} s with {n} tasks (idle pauses included), per task; then the same length of"
        " time with no task (timers alone), per second:",
        "",
        "| process | CPU ms/task | of it the task's own (minus timers) | waiting for a CPU ms/task | wake-ups/task "
        "| idle: CPU ms/s | idle: wake-ups/s |",
        "|---|---|---|---|---|---|---|",
    ]
    seconds = usage["seconds"]
    per_process = {k: v for k, v in usage["per_process"].items() if "/" not in k}
    rows = sorted(per_process.items(), key=lambda kv: -kv[1][0])
    for name, (cpu_ns, wait_ns, slices) in rows:
        quiet = idle.get(name, [0, 0, 0])
        own = (cpu_ns - quiet[0]) / n / 1e6  # the idle period lasted as long as the measured one
        lines.append(
            f"| {name} | {cpu_ns / n / 1e6:.2f} | {own:.2f} | {wait_ns / n / 1e6:.2f} | {slices / n:.0f} "
            f"| {quiet[0] / seconds / 1e6:.2f} | {quiet[2] / seconds:.0f} |"
        )
    cpu = sum(v[0] for v in per_process.values()) / n / 1e6
    wait = sum(v[1] for v in per_process.values()) / n / 1e6
    quiet_cpu = sum(v[0] for k, v in idle.items() if "/" not in k) / seconds / 1e6
    lines.append(f"| all | {cpu:.2f} | {cpu - quiet_cpu * seconds / n:.2f} | {wait:.2f} | | {quiet_cpu:.2f} | |")
    threads = sorted(
        ((k, v) for k, v in usage["per_process"].items() if "/" in k and v[2] / n >= 1), key=lambda kv: -kv[1][2]
    )
    if threads:
        lines += ["", "| thread (process/name) | CPU ms/task | wake-ups/task | idle: wake-ups/s |", "|---|---|---|---|"]
        for name, (cpu_ns, _wait_ns, slices) in threads:
            quiet = idle.get(name, [0, 0, 0])
            lines.append(f"| {name} | {cpu_ns / n / 1e6:.2f} | {slices / n:.0f} | {quiet[2] / seconds:.0f} |")
    return "\n".join(lines)


def background(traces: list[TaskTrace], packets: list[Packet], roles: dict[int, str]) -> str:
    """Requests per second between tasks (outside every task's submit → seen), by sender → receiver."""
    spans = sorted((t.task["before"], t.task["seen"]) for t in traces)
    start, end = spans[0][0], spans[-1][1]
    idle_s = (end - start) - sum(b - a for a, b in spans)
    counts: dict[tuple[str, str], int] = {}
    index = 0
    for packet in packets:
        if not start <= packet.at <= end:
            continue
        while index < len(spans) and spans[index][1] < packet.at:
            index += 1
        if index < len(spans) and spans[index][0] <= packet.at:
            continue
        if packet.src not in roles and packet.dst not in roles:
            continue  # another engineer's traffic on the shared loopback
        pair = (roles.get(packet.src, "?"), roles.get(packet.dst, "?"))
        counts[pair] = counts.get(pair, 0) + 1
    lines = [
        f"Packets with a payload per second while no task was in flight ({idle_s:.1f} s):",
        "",
        "| from → to | per second |",
        "|---|---|",
    ]
    for (src, dst), count in sorted(counts.items(), key=lambda kv: -kv[1]):
        if count / idle_s >= 0.5:
            lines.append(f"| {src} → {dst} | {count / idle_s:.1f} |")
    return "\n".join(lines)


def timeline(trace: TaskTrace) -> str:
    """Every packet of one task's window, ms after the client's submit, with the steps it matched."""
    names: dict[float, list[str]] = {}
    for name, seen in trace.found.items():
        names.setdefault(seen.at, []).append(name)
    t0 = trace.task["before"]
    rows = []
    for packet in trace.packets:
        tags = ", ".join(names.get(packet.at, []))
        head = packet.payload[:40].decode("latin-1").translate({c: "." for c in range(32)})
        rows.append(
            f"{(packet.at - t0) * 1000:8.3f}  {trace.role(packet.src):>12} → {trace.role(packet.dst):<12} "
            f"{len(packet.payload):6d} B  {tags:40s} {head!r}"
        )
    for key in ("handler_start", "seen"):
        if trace.task.get(key):
            rows.append(f"{(trace.task[key] - t0) * 1000:8.3f}  client clock: {key}")
    return "\n".join(sorted(rows, key=lambda r: float(r.split()[0])))


# -- capture --------------------------------------------------------------------------------------


def port_roles(pids: dict[str, int]) -> dict[int, str]:
    """Which process (by stack name) owns each local TCP port, listening or connected; children included."""
    import psutil

    roles: dict[int, str] = {}
    for name, pid in pids.items():
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in family:
            try:
                connections = process.net_connections(kind="tcp")
            except psutil.Error:
                continue
            for conn in connections:
                roles.setdefault(conn.laddr.port, name)
    return roles


def sched_totals(pids: dict[str, int]) -> dict[str, list[int]]:
    """Per process (its threads and children's): [CPU ns, ns spent runnable but waiting for a CPU, timeslices],
    from /proc/<pid>/task/<tid>/schedstat; also per thread name, keyed "process/thread"."""
    import psutil

    totals: dict[str, list[int]] = {}
    threads: dict[str, list[int]] = {}
    for name, pid in pids.items():
        total = [0, 0, 0]
        try:
            root = psutil.Process(pid)
            # The client launched the stack: its children are the services, counted under their own names.
            family = [root] if name == "client" else [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in family:
            for task in Path(f"/proc/{process.pid}/task").glob("*"):
                try:
                    fields = (task / "schedstat").read_text().split()
                    comm = (task / "comm").read_text().strip()
                except OSError:
                    continue
                per_thread = threads.setdefault(f"{name}/{comm}", [0, 0, 0])
                for i in range(3):
                    total[i] += int(fields[i])
                    per_thread[i] += int(fields[i])
        totals[name] = total
    return {**totals, **threads}


def _delta(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, list[int]]:
    return {name: [a - b for a, b in zip(after[name], before[name], strict=True)] for name in after if name in before}


def listener_pid(port: int) -> int | None:
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    return None


async def drive(
    edge: str, stamps_url: str, tasks: int, warmup: int, gap_s: tuple[float, float], pids: dict[str, int]
) -> tuple[list[dict[str, Any]], dict[int, str], dict[str, Any]]:
    """Sequential bench.stamp tasks with one WatchTasks stream open, as bench/ours.py latency() does; also
    which process owns each port, taken while every connection (this client's too) is still open, and the
    CPU and run-queue time of every process over the measured tasks."""
    import redis.asyncio as aioredis

    from bench.ours import Watcher
    from bench.stamps import parse_start, start_key
    from resilienttask import AsyncClient, TaskStatus

    records: list[dict[str, Any]] = []
    stamps = aioredis.Redis.from_url(stamps_url)
    async with AsyncClient(edge, timeout=60) as client:
        await client.signup(f"trace-{uuid.uuid4().hex[:12]}@example.com", "bench password")
        watcher = Watcher(client)
        await watcher.ready()
        everyone = {**pids, "client": os.getpid()}
        sched_before: dict[str, list[int]] = {}
        sched_started = time.time()
        try:
            for i in range(warmup + tasks):
                if i == warmup:
                    sched_before = sched_totals(everyone)
                    sched_started = time.time()
                await asyncio.sleep(random.uniform(*gap_s))
                label = uuid.uuid4().hex[:12]
                before = time.time()
                (task,) = await client.submit("stamp", kind="bench.stamp", payload={"label": label})
                replied = time.time()
                seen = await watcher.first(task.id, {TaskStatus.SUCCEEDED, TaskStatus.FAILED}, 30)
                raw = await stamps.lrange(start_key("ours", label), 0, -1)
                if i < warmup:
                    continue
                done = watcher.latest[task.id]
                records.append(
                    {
                        "label": label,
                        "task_id": task.id,
                        "before": before,
                        "replied": replied,
                        "seen": seen,
                        "handler_start": parse_start(raw[0]).at if raw else None,
                        "created_at": done.created_at.timestamp() if done.created_at else None,
                        "started_at": done.started_at.timestamp() if done.started_at else None,
                        "finished_at": done.finished_at.timestamp() if done.finished_at else None,
                        "loadavg": os.getloadavg(),
                    }
                )
            sched_after = sched_totals(everyone)
            busy_s = time.time() - sched_started
            # The same stack with the watcher open and no task, as long again: what the timers cost alone.
            await asyncio.sleep(busy_s)
            sched_idle = sched_totals(everyone)
            roles = port_roles(everyone)
            usage = {
                "seconds": busy_s,
                "tasks": tasks,
                "per_process": _delta(sched_before, sched_after),
                "idle_per_process": _delta(sched_after, sched_idle),
            }
        finally:
            await watcher.close()
            await stamps.aclose()
    return records, roles, usage


@dataclass(frozen=True)
class Variant:
    """What-if settings of the machine around the unchanged services."""

    workers: int = 2
    gateways: int = 2
    # ALTER SYSTEM SET synchronous_commit = off on the private PostgreSQL: commits stop waiting for the WAL fsync.
    pg_async_commit: bool = False


def _async_commit(database_url: str) -> None:
    import asyncpg

    async def alter() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("ALTER SYSTEM SET synchronous_commit = off")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    asyncio.run(alter())


def capture(out: Path, tasks: int, warmup: int, gap_s: tuple[float, float], variant: Variant) -> None:
    from bench.run import stores
    from services.core.limits import UserLimits
    from services.stack.stack import Stack, StackConfig

    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="rtask-trace-") as folder:
        data_dir = Path(folder)
        with stores(data_dir, data_dir / "logs") as (database_url, redis_url):
            stamps_url = f"{redis_url}/{STAMPS_DB}"
            # The primitives on these very servers just before, so a slow disk or a busy machine shows.
            primitives = {
                name: _spread(v) for name, v in asyncio.run(_probe(database_url, f"{redis_url}/0", 100)).items()
            }
            if variant.pg_async_commit:
                _async_commit(database_url)
            config = StackConfig(
                data_dir=data_dir / "stack",
                edge_port=0,
                edge_tls_port=0,
                admin_port=0,
                workers=variant.workers,
                gateways=variant.gateways,
                worker_slots=10,
                database_url=database_url,
                redis_url=f"{redis_url}/0",
                bcrypt_cost=4,
                dashboard_dir=None,
                # One user's throughput on purpose: every per-user limit off (docs/limits.md).
                limits=UserLimits.unlimited(),
                extra_env={
                    "RTASK_WORKER_IMPORTS": "bench.handlers",
                    "BENCH_STAMPS_URL": stamps_url,
                    "PYTHONPATH": str(repo),
                },
            )
            pcap = out / CAPTURE
            dump = subprocess.Popen(
                [
                    "tcpdump",
                    "-i",
                    "lo",
                    "-s",
                    "0",
                    "-U",
                    "-B",
                    "65536",
                    "--time-stamp-precision=nano",
                    "-w",
                    str(pcap),
                    "tcp",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                time.sleep(1.0)  # tcpdump is listening before the first connection is made
                with Stack(config) as stack:
                    load_before = os.getloadavg()
                    pids = {name: proc.pid for name, proc in stack.processes.items() if proc.alive()}
                    for store, url in (("postgres", database_url), ("valkey", redis_url)):
                        pid = listener_pid(int(url.rsplit(":", 1)[1].split("/")[0]))
                        if pid is not None:
                            pids[store] = pid
                    records, roles, usage = asyncio.run(
                        drive(stack.edge_address, stamps_url, tasks, warmup, gap_s, pids)
                    )
            finally:
                dump.send_signal(signal.SIGINT)
                dump.wait(10)
            roles[int(database_url.rsplit(":", 1)[1].split("/")[0])] = "postgres"
            roles[int(redis_url.rsplit(":", 1)[1])] = "valkey"
            for name, port in stack.ports.items():
                roles[port] = name
            roles = {port: ("envoy" if name.startswith("envoy") else name) for port, name in roles.items()}
    meta = {
        "route": "after",
        "primitives_before": primitives,
        "variant": variant.__dict__,
        "cpu": usage,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "roles": {str(p): n for p, n in sorted(roles.items())},
        "tasks": records,
    }
    (out / META).write_text(json.dumps(meta, indent=1))


# -- what the primitives cost on this machine now --------------------------------------------------


async def _probe(database_url: str, redis_url: str, n: int) -> dict[str, list[float]]:
    """ms of each primitive the path is made of, n times each, one at a time (no process of ours between)."""
    import asyncpg
    import redis.asyncio as aioredis

    spans: dict[str, list[float]] = {}

    async def timed(name: str, call: Any) -> None:
        values = spans.setdefault(name, [])
        for _ in range(n):
            started = time.perf_counter()
            await call()
            values.append((time.perf_counter() - started) * 1000)

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS hot_path_probe (id bigserial PRIMARY KEY, v text)")
        await timed("asyncpg SELECT 1 (round trip, no commit)", lambda: conn.fetchval("SELECT 1"))
        insert = "INSERT INTO hot_path_probe (v) VALUES ($1)"
        await timed("asyncpg 1-row INSERT, autocommit (synchronous_commit on)", lambda: conn.execute(insert, "x"))
        await conn.execute("SET synchronous_commit = off")
        await timed("asyncpg 1-row INSERT, autocommit, synchronous_commit off", lambda: conn.execute(insert, "x"))
        await conn.execute("DROP TABLE hot_path_probe")
    finally:
        await conn.close()
    writer = aioredis.Redis.from_url(redis_url)
    reader = aioredis.Redis.from_url(redis_url)
    try:
        await timed("redis PING (round trip)", writer.ping)
        stream = f"hot-path-probe-{uuid.uuid4().hex[:6]}"
        await writer.xgroup_create(stream, "g", id="$", mkstream=True)
        wake: list[float] = []
        for _ in range(n):
            read: Any = reader.xreadgroup("g", "c", {stream: ">"}, count=1, block=1000)
            reading: asyncio.Task[Any] = asyncio.ensure_future(read)
            await asyncio.sleep(0.005)  # the read is blocked in the server
            started = time.perf_counter()
            await writer.xadd(stream, {"f": "v"})
            await reading
            wake.append((time.perf_counter() - started) * 1000)
        spans["XADD → a blocked XREADGROUP returns (other connection, same process)"] = wake
        await writer.delete(stream)
    finally:
        await writer.aclose()
        await reader.aclose()
    return spans


def _wakeups(n: int) -> dict[str, list[float]]:
    """ms of a 1-byte pipe round trip to another (forked) process: back to back, after a 2 ms pause, and
    after a pause with the two processes pinned to different CPUs (the other vCPU has gone idle and must be
    woken: what a hop between two processes costs on this VM before any work is done)."""
    spans: dict[str, list[float]] = {}
    cpus = sorted(os.sched_getaffinity(0))
    spans.update(_ping_pong(n, None))
    if len(cpus) >= 2:
        spans.update(_ping_pong(n, (cpus[0], cpus[1])))
    return spans


def _ping_pong(n: int, pinned: tuple[int, int] | None) -> dict[str, list[float]]:
    previous = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {pinned[0]})
    ask_r, ask_w = os.pipe()
    answer_r, answer_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the echo process
        try:
            if pinned:
                os.sched_setaffinity(0, {pinned[1]})
            while os.read(ask_r, 1) == b"p":
                os.write(answer_w, b"x")
        finally:
            os._exit(0)
    spans: dict[str, list[float]] = {}
    try:
        cases = (
            [("pipe round trip, the other process pinned to another CPU, after a 2 ms pause", 0.002)]
            if pinned
            else [
                ("pipe round trip to another process, back to back", 0.0),
                ("pipe round trip to another process after a 2 ms pause", 0.002),
            ]
        )
        for label, pause_s in cases:
            values = spans.setdefault(label, [])
            for _ in range(n):
                if pause_s:
                    time.sleep(pause_s)
                started = time.perf_counter()
                os.write(ask_w, b"p")
                os.read(answer_r, 1)
                values.append((time.perf_counter() - started) * 1000)
    finally:
        os.write(ask_w, b"q")
        os.waitpid(pid, 0)
        for fd in (ask_r, ask_w, answer_r, answer_w):
            os.close(fd)
        os.sched_setaffinity(0, previous)
    return spans


def _spread(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 3), "p90": round(pct(values, 0.9), 3)}


def probe(n: int) -> None:
    from bench.run import stores

    with tempfile.TemporaryDirectory(prefix="rtask-probe-") as folder:
        data_dir = Path(folder)
        with stores(data_dir, data_dir / "logs") as (database_url, redis_url):
            print(f"load average {os.getloadavg()}")
            spans = {**_wakeups(n), **asyncio.run(_probe(database_url, f"{redis_url}/0", n))}
            print(f"load average {os.getloadavg()}")
    print("| primitive | p50 ms | p90 ms | n |\n|---|---|---|---|")
    for name, values in spans.items():
        print(f"| {name} | {statistics.median(values):.3f} | {pct(values, 0.9):.3f} | {len(values)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="start a private stack, capture, then print the table")
    run_p.add_argument("--out", type=Path, required=True)
    run_p.add_argument("--tasks", type=int, default=40)
    run_p.add_argument("--warmup", type=int, default=5)
    run_p.add_argument("--workers", type=int, default=2)
    run_p.add_argument("--gateways", type=int, default=2)
    run_p.add_argument("--pg-async-commit", action="store_true", help="what if commits did not wait for fsync")
    run_p.add_argument("--gap-ms", type=float, nargs=2, default=(200.0, 400.0), help="idle pause before each task")
    an_p = sub.add_parser("analyze", help="the table from an earlier capture")
    an_p.add_argument("folder", type=Path, nargs="+", help="one capture, or several to pool their tasks")
    an_p.add_argument("--timeline", type=int, action="append", default=[], help="print every packet of task N")
    an_p.add_argument(
        "--route",
        choices=sorted(ROUTES),
        help="the path to look for (default: the one meta.json names; 'before' for captures older than routes)",
    )
    probe_p = sub.add_parser("probe", help="what PostgreSQL and Valkey primitives cost here, without our services")
    probe_p.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    if args.command == "probe":
        probe(args.n)
        return
    if args.command == "run":
        variant = Variant(args.workers, args.gateways, args.pg_async_commit)
        capture(args.out, args.tasks, args.warmup, (args.gap_ms[0] / 1000, args.gap_ms[1] / 1000), variant)
        folders = [args.out]
    else:
        folders = args.folder
    pooled: list[TaskTrace] = []
    for folder in folders:
        traces, meta, packets = load(folder, getattr(args, "route", None))
        pooled += traces
        totals = [(t.task["seen"] - t.task["before"]) * 1000 for t in traces]
        print(
            f"{folder}: capture of {meta['date']}; route {meta['route']}; {meta.get('variant', {})}; "
            f"load average before {meta['loadavg_before']}, after {meta['loadavg_after']}; submit → seen p50 "
            f"{statistics.median(totals):.2f} ms, p90 {pct(totals, 0.9):.2f} ms"
        )
        for name, spread in meta.get("primitives_before", {}).items():
            print(f"  just before, on the same servers: {name}: p50 {spread['p50']} ms, p90 {spread['p90']} ms")
    print(table(pooled))
    if len(folders) == 1:
        print()
        print(cpu_table(meta))
        print()
        print(background(traces, packets, {int(p): n for p, n in meta["roles"].items()}))
    for n in getattr(args, "timeline", []):
        print(f"\ntask {n}: {pooled[n].task['task_id']}")
        print(timeline(pooled[n]))


if __name__ == "__main__":
    main()
