"""Fair sharing: another user's start latency while one user floods the pool, and what priorities and the fair
share cost the drain.

    .venv/bin/python -m bench.fairness [--quick] [--rounds 3] [--doc docs/benchmarks-fairness.md]

Starts its own embedded PostgreSQL and Valkey and our full local stack through Envoy (1 scheduler, 2 gateways,
WORKERS workers x SLOTS slots), then:

- fairness: the idle dispatch latency (submit → handler start of a no-op, one at a time, on an idle pool); then
  user A submits FLOOD tasks of RUNTIME_S each, which saturate the pool; once it is full, user B submits one
  no-op at a time and each one's submit → handler start is recorded. Fair share on (no fixed slot share:
  slot_share 1), and, for contrast, off, where B's task waits behind A's whole backlog (cut at a time limit);
- cost: the no-op drain (DRAIN tasks, in SubmitTask calls of 50 replicas, 8 in flight, until all SUCCEEDED),
  with the features on (every priority level used, fair share on, a concurrency key and a rate limit that never
  bind) and off (default priority, no cap, no key, no rate limit),
  alternated ROUNDS times in one run, each side on a fresh stack; medians compared.

Figures are printed, never asserted; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.figures import spread_ms
from bench.ours import SUBMIT_BATCH, SUBMITS_IN_FLIGHT, OurBench, Servers
from bench.run import STAMPS_DB, machine, source_version, stores
from resilienttask import AsyncClient
from services.core import kind_controls
from services.core.limits import UserLimits
from services.stack.stack import Stack


@dataclasses.dataclass(frozen=True)
class Sizes:
    workers: int
    slots: int
    flood: int
    runtime_s: float
    idle_probes: int
    probes: int
    off_probes: int
    off_wait_s: float
    drain: int


FULL = Sizes(workers=3, slots=10, flood=5_000, runtime_s=1.0, idle_probes=40, probes=40, off_probes=3,
             off_wait_s=20.0, drain=5_000)  # fmt: skip
QUICK = Sizes(workers=2, slots=5, flood=500, runtime_s=0.5, idle_probes=10, probes=10, off_probes=2,
              off_wait_s=5.0, drain=1_000)  # fmt: skip

FAIR = dataclasses.replace(UserLimits.unlimited(), fair_share=True)  # fair share, no fixed slot share
OFF = UserLimits.unlimited()
# What a deployment had before fair sharing, with the count limits off: the fixed half of the pool per user.
FIXED_HALF = dataclasses.replace(UserLimits.unlimited(), slot_share=UserLimits().slot_share)
PROBE_GAP_S = 0.25


async def start_latency(ours: OurBench, client: AsyncClient, timeout_s: float) -> float | None:
    """Submit one task of the flood's kind, with no workload; seconds from the call to the handler's start (None:
    not within). The same kind as the flood, so the same streams: another kind has streams of its own."""
    label = uuid.uuid4().hex[:12]
    before = time.time()
    await client.submit("probe", kind="bench.sleep", payload={"label": label})
    starts = await ours._wait_starts(label, 1, timeout_s)
    return starts[0][0] - before if starts else None


async def flood(client: AsyncClient, n: int, runtime_s: float, label: str) -> list[str]:
    """Submit n sleeping tasks in calls of SUBMIT_BATCH; returns the batch ids."""
    gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)

    async def submit(replicas: int) -> str:
        async with gate:
            tasks = await client.submit(
                "flood", kind="bench.sleep", payload={"label": label}, workload=runtime_s, replicas=replicas
            )
            return tasks[0].batch_id

    return list(await asyncio.gather(*(submit(min(SUBMIT_BATCH, n - i)) for i in range(0, n, SUBMIT_BATCH))))


async def fairness(ours: OurBench, sizes: Sizes, limits: UserLimits, probes: int, wait_s: float) -> dict[str, Any]:
    pool = sizes.workers * sizes.slots
    with ours.stack(sizes.workers, sizes.slots, limits=limits) as stack:
        async with ours.client(stack) as a, ours.client(stack) as b:
            idle = [await start_latency(ours, b, 10) for _ in range(sizes.idle_probes)]
            label = uuid.uuid4().hex[:12]
            began = time.time()
            batches = await flood(a, sizes.flood, sizes.runtime_s, label)
            submitted_s = time.time() - began
            await ours._wait_starts(label, pool, 60)  # the pool is saturated
            latencies: list[float | None] = []
            for _ in range(probes):
                latencies.append(await start_latency(ours, b, wait_s))
                await asyncio.sleep(PROBE_GAP_S)
            a_started = len(await ours._starts(label))
            for batch_id in batches:
                await a.cancel_batch(batch_id)
    started = [v for v in latencies if v is not None]
    idle_ok = [v for v in idle if v is not None]
    return {
        "pool_slots": pool,
        "flood": sizes.flood,
        "flood_submitted_s": round(submitted_s, 2),
        "runtime_s": sizes.runtime_s,
        "idle_start_ms": spread_ms(idle_ok),
        "b_start_ms": spread_ms(started),
        "b_started": len(started),
        "b_probes": probes,
        "b_wait_limit_s": wait_s,
        "a_started_when_done": a_started,
    }


@dataclasses.dataclass(frozen=True)
class Side:
    """What one side of the A/B turns on."""

    priorities: bool  # the submissions cycle through the five levels (else the default, 3)
    limits: UserLimits
    # A concurrency key on every task (ten keys, limit 1,000) and a rate limit on the kind (100,000 per second):
    # both checked at every start, neither ever binding.
    gates: bool


SIDES: dict[str, Side] = {
    "on": Side(True, FAIR, True),
    "off": Side(False, OFF, False),
    "priorities": Side(True, OFF, False),
    "fair": Side(False, FAIR, False),
    "gates": Side(False, OFF, True),
    "fixed half": Side(False, FIXED_HALF, False),
}
PARTS = ("priorities", "fair", "gates", "fixed half")
KIND = "bench.noop"


@asynccontextmanager
async def drain_client(ours: OurBench, stack: Stack, gates: bool) -> AsyncIterator[AsyncClient]:
    """A new user's client; with gates, the kind has a rate limit, set and cleared by the functions behind
    OperatorService.SetKindRateLimit and ClearKindRateLimit (the controls live in the bench's database, which
    the next stack shares)."""
    async with AsyncClient(stack.edge_address, timeout=60) as client:
        await client.signup(f"bench-{uuid.uuid4().hex[:12]}@example.com", "bench password")
        if not gates:
            yield client
            return
        pool = await asyncpg.create_pool(ours.servers.database_url, min_size=1, max_size=1)
        assert pool is not None
        try:
            await kind_controls.set_rate_limit(pool, KIND, 100_000, 1000)
            yield client
        finally:
            await kind_controls.clear_rate_limit(pool, KIND)
            await pool.close()


async def drain_tasks(ours: OurBench, client: AsyncClient, features: Side, n: int, side: str) -> float:
    """Submit the drain's n no-ops with a side's features (SUBMIT_BATCH replicas a call, SUBMITS_IN_FLIGHT calls at
    once); returns when the last one SUCCEEDED (epoch seconds)."""
    label = uuid.uuid4().hex[:12]
    gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)

    async def submit(index: int, replicas: int) -> None:
        keyed = {"concurrency_key": f"key-{index % 10}", "concurrency_limit": 1000} if features.gates else {}
        async with gate:
            await client.submit(
                "noop",
                kind=KIND,
                payload={"label": label},
                replicas=replicas,
                priority=index % 5 + 1 if features.priorities else 0,
                **keyed,  # type: ignore[arg-type]
            )

    sizes_of = [min(SUBMIT_BATCH, n - start) for start in range(0, n, SUBMIT_BATCH)]
    await asyncio.gather(*(submit(index, replicas) for index, replicas in enumerate(sizes_of)))
    done = await ours._until(lambda: ours._succeeded(client, n), 300, 0.02)
    if done is None:
        raise RuntimeError(f"{side}: the drain did not finish")
    return done


async def drain(ours: OurBench, sizes: Sizes, side: str) -> float:
    """Tasks per second from the first submission to the last SUCCEEDED, for one side of the A/B."""
    features = SIDES[side]
    with ours.stack(sizes.workers, sizes.slots, limits=features.limits) as stack:
        async with drain_client(ours, stack, features.gates) as client:
            first = time.time()
            done = await drain_tasks(ours, client, features, sizes.drain, side)
            return round(sizes.drain / (done - first))


async def measure(
    servers: Servers, log_dir: Path, sizes: Sizes, rounds: int, sides: tuple[str, ...], latency: bool = True
) -> dict[str, Any]:
    ours = OurBench(servers, log_dir)
    try:
        results: dict[str, Any] = {}
        if latency:
            results["fair"] = await fairness(ours, sizes, FAIR, sizes.probes, 30.0)
            print("fair:", results["fair"], flush=True)
            results["off"] = await fairness(ours, sizes, OFF, sizes.off_probes, sizes.off_wait_s)
            print("off:", results["off"], flush=True)
        cost: dict[str, list[float]] = {side: [] for side in sides}
        # Each drain in the order run: (round, side, one-minute load average at its start, tasks/s).
        ran: list[tuple[int, str, float, float]] = []
        for index in range(rounds):
            # The A/B every round, alternated; the parts (when asked for) once, in the first round.
            this_round = sides if index == 0 else ("on", "off")
            for side in this_round if index % 2 == 0 else tuple(reversed(this_round)):
                load = round(os.getloadavg()[0], 2)
                cost[side].append(await drain(ours, sizes, side))
                ran.append((index + 1, side, load, cost[side][-1]))
                print(f"-- round {index + 1}, {side} (load {load}): {cost[side][-1]} tasks/s", flush=True)
        results["cost"] = cost
        results["ran"] = ran
        return results
    finally:
        await ours.close()


def document(meta: dict[str, Any], results: dict[str, Any]) -> str:
    fair, off, cost = results["fair"], results["off"], results["cost"]
    idle, b = fair["idle_start_ms"], fair["b_start_ms"]
    target_ms = 2 * idle["p50"] + fair["runtime_s"] * 1000
    on_median, off_median = statistics.median(cost["on"]), statistics.median(cost["off"])
    load = meta["machine"]
    off_started = f"{off['b_started']} of {off['b_probes']} started within {off['b_wait_limit_s']:g} s"
    if off["b_started"]:
        off_started += f" (p50 {off['b_start_ms'].get('p50')} ms)"
    return "\n".join(
        [
            "# Benchmarks: fair sharing",
            "",
            f"Generated by `{meta['command']}` (bench/fairness.py) on {meta['date']}, commit {meta['commit']}; "
            f"{load['nproc']} cores, load average {load['load_avg_at_start']} at the start and "
            f"{load.get('load_avg_at_end')} at the end.",
            "",
            f"Our full local stack through Envoy ({meta['sizes']['workers']} workers x {meta['sizes']['slots']} "
            "slots, 1 scheduler, 2 gateways) on its own embedded PostgreSQL and Valkey. Figures are measured, never "
            "asserted: the machine is shared, and load moves them.",
            "",
            "## Another user's start while one user floods",
            "",
            f"User A submits {fair['flood']:,} tasks of {fair['runtime_s']:g} s ({fair['flood_submitted_s']} s to "
            f"submit), which saturate the {fair['pool_slots']} slots; user B then submits {fair['b_probes']} no-ops "
            f"one at a time ({PROBE_GAP_S} s apart), each timed from the call to its handler's start. Fair share on, "
            "no fixed slot share (RTASK_LIMIT_SLOT_SHARE=1, RTASK_LIMIT_FAIR_SHARE=true).",
            "",
            "| figure | value | target |",
            "| --- | --- | --- |",
            f"| idle dispatch latency (submit → start, idle pool), p50 / p99 | {idle.get('p50')} / {idle.get('p99')} "
            "ms | |",
            f"| B's submit → start while A floods, p50 | {b.get('p50')} ms | ≤ {target_ms:g} ms "
            f"(2 x idle p50 + one task's {fair['runtime_s']:g} s) |",
            f"| B's submit → start while A floods, p99 | {b.get('p99')} ms | ≤ {target_ms:g} ms |",
            f"| B's tasks started / submitted | {fair['b_started']} / {fair['b_probes']} | all |",
            f"| A's tasks started by then (of {fair['flood']:,}) | {fair['a_started_when_done']:,} | A far from "
            "drained |",
            f"| the same with fair share off (one FIFO behind A's backlog) | {off_started} | |",
            "",
            "## What the features cost the drain",
            "",
            f"No-op drain of {meta['sizes']['drain']:,} tasks of one user, **on** = every priority level used "
            "(the submissions cycle through 1 to 5), the fair share on (the user is alone: its backlog beyond the "
            "pool and its headroom goes to the surplus lanes, nothing held), a concurrency key on every task "
            "(ten keys, limit 1,000) and a rate limit on the kind (100,000 starts a second), neither binding; "
            "**off** = default priority and "
            f"no cap (every per-user limit off); alternated {len(cost['on'])} times, each side on a fresh stack.",
            "",
            "| figure | on (median) | off (median) | on ÷ off | rounds on | rounds off |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| no-op drain (tasks/s) | {on_median:g} | {off_median:g} | {on_median / off_median:.2f} | "
            f"{', '.join(f'{v:g}' for v in cost['on'])} | {', '.join(f'{v:g}' for v in cost['off'])} |",
            *(
                f"| … {side} alone (first round; {PART_NOTES[side]}) | {cost[side][0]:g} | {cost['off'][0]:g} (that "
                f"round's) | {cost[side][0] / cost['off'][0]:.2f} | | |"
                for side in PARTS
                if cost.get(side)
            ),
            "",
            "Each drain as run (round, side: load average at its start, tasks/s), and each round's on ÷ off: "
            + "; ".join(f"{r} {side}: {load:g}, {rate:g}" for r, side, load, rate in results.get("ran", []))
            + ". Rounds' on ÷ off: "
            + ", ".join(f"{on / off:.2f}" for on, off in zip(cost["on"], cost["off"], strict=True))
            + ".",
            "",
            *READING,
        ]
    )


READING = [
    (
        "Reading the cost: each part alone is compared with the same round's off, the whole A/B with the off "
        "rounds' median. **Priorities** and **the surplus lanes** cost a worker's read no round trip: it takes the "
        "levels most urgent first, each level's share lane before its surplus lane, in one call of a Valkey function "
        "(services/core/dispatch_functions.py) however many empty lanes it passes, and what is left is the "
        "function's own empty XREADGROUPs inside Valkey. **The fair share**, for a user alone in the pool, costs "
        "the surplus lanes: what it submits beyond (1 + headroom) x the slots goes to each level's surplus lane "
        "instead of waiting held; "
        "with other users active, a user beyond its fair cap waits held in PostgreSQL and follows the release path "
        "(each end releases the next held task in its own statement, and the scheduler's publish sweep, woken by "
        "NOTIFY, sends it to its stream), which this drain of one user does not measure. **The gates** (a "
        "concurrency key on every task and a rate limit on the kind, neither binding) are checked in the start's "
        "one statement (its keys locked and counted, its rate tokens, taken in one Redis call made before it, "
        "checked against the kind's limit), which starts what fits and locks no owner's row; only what binds goes "
        "on to the checked path's transaction. Tasks that run for a second are not slowed by any of "
        "it (the headroom covers the release's round trips). The machine is shared: the off "
        "rounds' spread is the noise floor of every ratio here."
    ),
    "",
]

PART_NOTES = {
    "priorities": "every level used, no cap",
    "gates": "a concurrency key and a rate limit, neither binding",
    "fair": "fair share, default priority",
    "fixed half": "the shipped default before fair sharing: half the pool per user, held beyond it",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller: for trying the harness, not for quoting")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--doc", type=Path, help="write the figures page here (docs/benchmarks-fairness.md)")
    parser.add_argument("--parts", action="store_true", help="also drain with each half of the features alone")
    parser.add_argument("--drain-only", action="store_true", help="only the A/B of the drain (not for --doc)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_version(),
        "command": "python -m bench.fairness " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench-fairness",
        "machine": machine(),
        "sizes": dataclasses.asdict(sizes),
    }
    print(f"bench.fairness: {meta['date']}, load average {meta['machine']['load_avg_at_start']}", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="rtask-bench-fair-"))
    log_dir = data_dir / "logs"
    try:
        with stores(data_dir, log_dir) as (database_url, redis_url):
            servers = Servers(database_url, f"{redis_url}/0", f"{redis_url}/{STAMPS_DB}", data_dir)
            sides = ("on", "off", *PARTS) if args.parts else ("on", "off")
            results = asyncio.run(measure(servers, log_dir, sizes, args.rounds, sides, not args.drain_only))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    meta["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.drain_only:
        print(results)
        return 0
    text = document(meta, results)
    print(results)
    print(text)
    if args.doc is not None:
        args.doc.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
