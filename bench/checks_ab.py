"""What the trust boundaries cost on the hot path: this checkout against the commit before them, alternated.

    .venv/bin/python -m bench.checks_ab [--baseline REF] [--rounds 3] [--out bench/results/checks-ab]
                                        [--doc docs/checks-cost.md]

Each round runs our throughput (no-op drain) and latency (submit → start, submit → result) scenarios twice,
"on" (this checkout: per-worker credentials checked on every message, holder checks, Redis ACL users, per-user
counters and admission, small events) and "off" (BASELINE, the code before them), in alternating order so that
drift of a shared, noisy machine falls on both sides alike. Each side is its own `python -m bench.run` from its own
checkout (its own stores, stack and SDK); the figure quoted is the median of the rounds. Printed, never
asserted. The difference also includes what came with the checks (events no longer carry payloads and results).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# main just before the trust boundaries (worker identity, Redis ACL, limits, small events, TLS edge).
BASELINE = "3f1b554"
SIDES = ("on", "off")
Figure = tuple[str, str, Callable[[dict[str, Any]], float], bool]  # label, unit, extract, higher is better
FIGURES: list[Figure] = [
    ("no-op drain", "tasks/s", lambda r: float(r["throughput"]["ours"]["drain_per_s"]), True),
    ("SubmitTask enqueue", "tasks/s", lambda r: float(r["throughput"]["ours"]["enqueue_per_s"]), True),
    ("submit → handler start p50", "ms", lambda r: float(r["latency"]["ours"]["start_ms"]["p50"]), False),
    ("submit → handler start p99", "ms", lambda r: float(r["latency"]["ours"]["start_ms"]["p99"]), False),
    ("submit → result seen p50", "ms", lambda r: float(r["latency"]["ours"]["seen_ms"]["p50"]), False),
]


@contextmanager
def baseline_checkout(ref: str) -> Iterator[Path]:
    """The baseline as a detached worktree. Its SDK and generated code are linked at its root, so its processes
    (started with PYTHONPATH set to the checkout) import them rather than this checkout's installed ones."""
    folder = Path(tempfile.mkdtemp(prefix="rtask-baseline-")) / "src"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), ref], check=True)
    try:
        (folder / "resilienttask").symlink_to(folder / "clients" / "python" / "resilienttask")
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False)
        shutil.rmtree(folder.parent, ignore_errors=True)


def run_side(checkout: Path, out: Path) -> dict[str, Any]:
    """One `bench.run` of the two scenarios from the given checkout; its results.json."""
    env = dict(os.environ, PYTHONPATH=f"{checkout}/clients/python{os.pathsep}{checkout}")
    command = [sys.executable, "-m", "bench.run", "--only", "throughput,latency,ours", "--out", str(out)]
    subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    results: dict[str, Any] = json.loads((out / "results.json").read_text())["results"]
    return results


def render(ref: str, rounds: list[dict[str, dict[str, Any]]], load: tuple[list[float], list[float]]) -> str:
    lines = [
        "# What the trust boundaries cost on the hot path",
        "",
        f"`python -m bench.checks_ab` (run by `make bench-checks`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"our throughput and latency scenarios, **on** = this checkout ({_head()}), **off** = {ref} (the code before "
        f"the checks), alternated {len(rounds)} times in one run; each figure is the median of the rounds. "
        f"Load average {load[0]} at the start, {load[1]} at the end.",
        "",
        "| figure | on (median) | off (median) | on ÷ off | rounds on | rounds off |",
        "|---|---|---|---|---|---|",
    ]
    for label, unit, extract, _ in FIGURES:
        values = {side: [extract(r[side]) for r in rounds] for side in SIDES}
        on, off = statistics.median(values["on"]), statistics.median(values["off"])
        lines.append(
            f"| {label} ({unit}) | {on:g} | {off:g} | {on / off:.2f} | "
            f"{', '.join(f'{v:g}' for v in values['on'])} | {', '.join(f'{v:g}' for v in values['off'])} |"
        )
    lines += [
        "",
        "What differs between the sides: per-worker credentials checked on every worker message and holder checks "
        "folded into the start and finish statements; Redis ACL users (each command checked by Valkey); the per-user "
        "counters kept by triggers and the admission check in the submit statement (the limits themselves are set off, "
        "as in every benchmark of one user's throughput: docs/limits.md); change events without payloads and results. "
        "Both sides reach Envoy over plaintext on loopback (TLS is the operator's listener; the SDK over TLS is "
        "covered by tests, not measured here).",
        "",
    ]
    return "\n".join(lines)


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", default=BASELINE, help="the commit measured as 'off'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "checks-ab")
    parser.add_argument("--doc", type=Path, help="also write the page here (docs/checks-cost.md)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    rounds: list[dict[str, dict[str, Any]]] = []
    with baseline_checkout(args.baseline) as baseline:
        checkouts = {"on": REPO, "off": baseline}
        for index in range(args.rounds):
            order = SIDES if index % 2 == 0 else tuple(reversed(SIDES))
            results = {}
            for side in order:
                print(f"-- round {index + 1}, {side} ...", flush=True)
                results[side] = run_side(checkouts[side], args.out / f"round{index + 1}-{side}")
                print(f"   {[f'{label}: {extract(results[side]):g}' for label, _, extract, _ in FIGURES]}", flush=True)
            rounds.append(results)
    text = render(args.baseline, rounds, (load_start, [round(x, 2) for x in os.getloadavg()]))
    (args.out / "checks-ab.md").write_text(text)
    if args.doc is not None:
        args.doc.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
