"""Turns results.json into a Markdown table (each figure, ours ÷ the best peer and ours ÷ the durable peer), the
targets, and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEERS = ("celery", "rq", "arq", "dramatiq", "procrastinate")
SYSTEMS = ("ours", *PEERS)
# The peer that, like us, commits every job to PostgreSQL: the like-for-like comparison beside the best peer.
DURABLE_PEER = "procrastinate"


@dataclass(frozen=True)
class Row:
    scenario: str
    label: str
    path: str  # dotted path into one system's figures
    higher_is_better: bool
    unit: str = ""


ROWS = (
    Row("throughput", "no-op tasks, end-to-end drain (first submit → last terminal state)", "drain_per_s", True, "/s"),
    Row("throughput", "no-op tasks, enqueue (bulk or concurrent calls)", "enqueue_per_s", True, "/s"),
    Row("throughput", "no-op tasks, enqueue one call at a time", "single_call_enqueue_per_s", True, "/s"),
    Row("latency", "submit → handler start, p50", "start_ms.p50", False, " ms"),
    Row("latency", "submit → handler start, p95", "start_ms.p95", False, " ms"),
    Row("latency", "submit → handler start, p99", "start_ms.p99", False, " ms"),
    Row("latency", "submit → result seen by the client, p50", "seen_ms.p50", False, " ms"),
    Row("latency", "submit → result seen by the client, p95", "seen_ms.p95", False, " ms"),
    Row("latency", "submit → result seen by the client, p99", "seen_ms.p99", False, " ms"),
    Row("sleep", "100 x 1 s sleeps on 100 slots: wall", "wall_s", False, " s"),
    Row("sleep", "… tasks started within 0.5 s", "started_within_0_5_s", True),
    Row("sleep", "… last task started after", "last_start_s", False, " s"),
    Row("cancel", "cancel → handler stopped, p50", "stopped_ms.p50", False, " ms"),
    Row("cancel", "cancel → handler stopped, p99", "stopped_ms.p99", False, " ms"),
    Row("cancel", "cancel → stopped status seen by the client, p50", "seen_ms.p50", False, " ms"),
    Row("cancel", "cancel → stopped status seen by the client, p99", "seen_ms.p99", False, " ms"),
    Row("cancel", "the cancel call itself, p50", "call_ms.p50", False, " ms"),
    Row("cancel", "missed cancels (handler never stopped)", "missed", False),
    Row(
        "crash",
        "kill -9 of the node running a 20 s task: runs again after, defaults",
        "defaults.rerun_after_s",
        False,
        " s",
    ),
    Row("crash", "… same, tuned for redelivery", "tuned.rerun_after_s", False, " s"),
    Row("crash", "healthy 30 s task (longer than the redelivery threshold): runs", "healthy.runs", False),
    Row(
        "watch",
        "WatchTasks push latency (event appended → watcher), 10 users x 100 watchers, p50",
        "push_ms.p50",
        False,
        " ms",
    ),
    Row("watch", "… same, p95", "push_ms.p95", False, " ms"),
    Row("watch", "… same, p99", "push_ms.p99", False, " ms"),
    Row("watch", "… 1 user x 1,000 watchers (every event to all 1,000), p50", "one_user.push_ms.p50", False, " ms"),
    Row("watch", "… 1 user x 1,000 watchers, p99", "one_user.push_ms.p99", False, " ms"),
    Row("watch", "50-replica SubmitTask, p50", "submit_ms.p50", False, " ms"),
    Row("watch", "50-replica SubmitTask, p99", "submit_ms.p99", False, " ms"),
    Row("watch", "RSS per worker at rest", "rss_mib_at_rest.worker", False, " MiB"),
    Row("watch", "RSS per worker under load (peak)", "rss_mib_under_load.worker", False, " MiB"),
    Row("watch", "RSS per gateway at rest", "rss_mib_at_rest.gateway", False, " MiB"),
    Row("watch", "RSS per gateway under load (peak)", "rss_mib_under_load.gateway", False, " MiB"),
    Row("watch", "RSS of the scheduler under load (peak)", "rss_mib_under_load.scheduler", False, " MiB"),
)

SCENARIO_TITLES = {
    "throughput": "1. Throughput",
    "latency": "2. Dispatch latency (sequential tasks, idle workers)",
    "sleep": "3. Parallel sleep",
    "cancel": "4. Cancel a running 30 s task",
    "crash": "5. Crash recovery",
    "watch": "6. Ours only: watch fan-out, batch submit, memory",
}


def lookup(figures: dict[str, Any] | None, path: str) -> Any:
    value: Any = figures
    for part in path.split("."):
        if part == "healthy" and isinstance(value, dict):
            part = "healthy_defaults" if "healthy_defaults" in value else "healthy_tuned"
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def crash_cell(figures: dict[str, Any] | None, path: str) -> str | None:
    """'no rerun ≤ 70 s' where a crashed task never ran again."""
    if figures is None or not path.endswith("rerun_after_s"):
        return None
    part = figures.get(path.split(".")[0])
    if isinstance(part, dict) and part.get("rerun") is False:
        return f"no rerun ≤ {part.get('give_up_s', 0):g} s"
    return None


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")
        return f"{text}{unit}"
    return str(value)


def ratio(row: Row, results: dict[str, dict[str, Any]]) -> str:
    return _ratio_text(row, _ours(results, row.path), _best(results, row.path, row.higher_is_better))


def durable_ratio(row: Row, results: dict[str, dict[str, Any]]) -> str:
    return _ratio_text(row, _ours(results, row.path), _figure(results, DURABLE_PEER, row.path))


def _ratio_text(row: Row, ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None or peer == 0:
        return "—"
    return f"{ours / peer:.2f}x {'(higher is better)' if row.higher_is_better else '(lower is better)'}"


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for scenario, title in SCENARIO_TITLES.items():
        if scenario not in results:
            continue
        by_system = results[scenario]
        systems = [s for s in SYSTEMS if s in by_system] if scenario != "watch" else ["ours"]
        lines += [f"### {title}", ""]
        durable = "ours" in systems and DURABLE_PEER in systems
        ratios = (["ours ÷ best peer"] if len(systems) > 1 else []) + (
            [f"ours ÷ {DURABLE_PEER} (durable peer)"] if durable else []
        )
        header = ["figure", *systems, *ratios]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in (r for r in ROWS if r.scenario == scenario):
            cells = []
            for system in systems:
                figures = by_system.get(system)
                if figures and "error" in figures:
                    cells.append("error")
                    continue
                cells.append(crash_cell(figures, row.path) or fmt(lookup(figures, row.path), row.unit))
            if all(c == "—" for c in cells):
                continue
            extra = ([ratio(row, by_system)] if len(systems) > 1 else []) + (
                [durable_ratio(row, by_system)] if durable else []
            )
            lines.append("| " + " | ".join([row.label, *cells, *extra]) + " |")
        lines += ["", *notes(scenario, by_system), ""]
    return "\n".join(lines)


def notes(scenario: str, by_system: dict[str, dict[str, Any]]) -> list[str]:
    """How each system was driven in this scenario (methods, APIs, sizes), and any error."""
    keys = {
        "throughput": ("n", "workers", "enqueue_method", "handlers_done_per_s", "failed", "note"),
        "latency": ("n", "result_api"),
        "sleep": ("slots", "wall_basis", "note"),
        "cancel": ("rounds", "method", "forced"),
        "crash": (),
        "watch": ("watchers", "users", "events", "deliveries", "missing", "event_messages_per_s", "calls", "replicas"),
    }[scenario]
    out = []
    for system, figures in by_system.items():
        parts = [f"{k}: {fmt(figures[k])}" for k in keys if k in figures]
        for part in ("defaults", "tuned", "healthy_defaults", "healthy_tuned"):
            if scenario == "crash" and isinstance(figures.get(part), dict) and "final_status" in figures[part]:
                parts.append(f"{part}: ended {figures[part]['final_status']} on attempt {figures[part]['attempt']}")
        if "legs_p50_ms" in figures:
            legs = "; ".join(f"{leg} {fmt(ms, ' ms')}" for leg, ms in figures["legs_p50_ms"].items())
            parts.append(f"where the time goes (p50 of each leg): {legs}")
        if "error" in figures:
            parts.append(f"error: {figures['error']}")
        if parts:
            out.append(f"- {system}: " + "; ".join(parts))
    return out


@dataclass(frozen=True)
class Target:
    text: str
    check: Callable[[dict[str, dict[str, Any]]], bool | None]


def _best(results: dict[str, dict[str, Any]], path: str, higher: bool) -> float | None:
    peers = [v for p in PEERS if (v := _figure(results, p, path)) is not None]
    if not peers:
        return None
    return max(peers) if higher else min(peers)


def _figure(results: dict[str, dict[str, Any]], system: str, path: str) -> float | None:
    value = lookup(results.get(system), path)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ours(results: dict[str, dict[str, Any]], path: str) -> float | None:
    return _figure(results, "ours", path)


def _compare(scenario: str, path: str, higher: bool) -> Callable[[dict[str, dict[str, Any]]], bool | None]:
    def check(results: dict[str, dict[str, Any]]) -> bool | None:
        by_system = results.get(scenario, {})
        ours, best = _ours(by_system, path), _best(by_system, path, higher)
        if ours is None or best is None:
            return None
        return ours >= best if higher else ours <= best

    return check


def _below(scenario: str, path: str, limit: float) -> Callable[[dict[str, dict[str, Any]]], bool | None]:
    def check(results: dict[str, dict[str, Any]]) -> bool | None:
        ours = _ours(results.get(scenario, {}), path)
        return None if ours is None else ours < limit

    return check


def _crash(results: dict[str, dict[str, Any]]) -> bool | None:
    ours = results.get("crash", {}).get("ours")
    if not ours or "defaults" not in ours:
        return None
    rerun = ours["defaults"].get("rerun_after_s")
    runs = ours.get("healthy_defaults", {}).get("runs")
    return rerun is not None and rerun <= 12 and runs == 1


def _ahead_of_durable_peer(results: dict[str, dict[str, Any]]) -> bool | None:
    """Every figure both we and the durable peer have: ours at least as good (None when none was measured)."""
    verdicts = []
    for row in ROWS:
        by_system = results.get(row.scenario, {})
        ours, peer = _ours(by_system, row.path), _figure(by_system, DURABLE_PEER, row.path)
        if ours is not None and peer is not None:
            verdicts.append(ours >= peer if row.higher_is_better else ours <= peer)
    return all(verdicts) if verdicts else None


TARGETS = (
    Target("no-op end-to-end throughput ≥ 1.0x the fastest peer", _compare("throughput", "drain_per_s", True)),
    Target("submit → handler start p50 ≤ the best peer's", _compare("latency", "start_ms.p50", False)),
    Target("submit → handler start p99 < 10 ms", _below("latency", "start_ms.p99", 10)),
    Target("cancel → handler stopped p50 ≤ the best peer's", _compare("cancel", "stopped_ms.p50", False)),
    Target("cancel → CANCELLED seen by the client p50 ≤ the best peer's", _compare("cancel", "seen_ms.p50", False)),
    Target("cancel → CANCELLED seen by the client p99 < 25 ms", _below("cancel", "seen_ms.p99", 25)),
    Target("crash recovery ≤ 12 s with default settings, healthy long task run once", _crash),
    Target("100 x 1 s sleeps: wall ≤ 1.1 s", lambda r: _below("sleep", "wall_s", 1.1 + 1e-9)(r)),
    Target(
        "WatchTasks push latency p99 < 50 ms with 1,000 watchers (10 users x 100)", _below("watch", "push_ms.p99", 50)
    ),
    Target("… and with 1,000 watchers of one user", _below("watch", "one_user.push_ms.p99", 50)),
    Target(
        f"ahead of {DURABLE_PEER.capitalize()} (the durable peer) on every figure both measure (level counts)",
        _ahead_of_durable_peer,
    ),
)


def targets(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| target | met |", "|---|---|"]
    for target in TARGETS:
        verdict = target.check(results)
        lines.append(f"| {target.text} | {'not measured' if verdict is None else 'yes' if verdict else 'no'} |")
    return "\n".join(lines)


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("throughput", "drain_per_s", "no-op drain, tasks/s (higher is better)", False),
        ("latency", "start_ms.p50", "submit → start p50, ms (log; lower is better)", True),
        ("latency", "seen_ms.p50", "submit → result seen p50, ms (log)", True),
        ("cancel", "stopped_ms.p50", "cancel → stopped p50, ms (log)", True),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (scenario, key, title, log) in zip(axes, panels, strict=True):
        by_system = results.get(scenario, {})
        names = [s for s in SYSTEMS if isinstance(lookup(by_system.get(s), key), int | float)]
        values = [lookup(by_system[s], key) for s in names]
        bars = ax.bar(names, values, color=["#d9534f" if n == "ours" else "#5b8fd9" for n in names])
        ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=8)
        ax.set_title(title, fontsize=9)
        if log and values:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(document: dict[str, Any], chart_name: str) -> str:
    meta = document["meta"]
    machine = meta["machine"]
    lines = [
        f"Run of {meta['date']} — `{meta['command']}`"
        + (" (quick: smaller sizes)" if meta.get("quick") else "")
        + (f", code at {meta['commit']}" if meta.get("commit") else ""),
        "",
        f"Machine: `nproc` {machine['nproc']}, {machine['platform']}, Python {machine['python']}; load average "
        f"(1, 5, 15 min) at the start {' / '.join(str(x) for x in machine['load_avg_at_start'])}"
        + (
            f", at the end {' / '.join(str(x) for x in machine['load_avg_at_end'])}"
            if "load_avg_at_end" in machine
            else ""
        )
        + ". `free -h`:",
        "",
        "```",
        machine.get("free_h", ""),
        "```",
    ]
    if meta.get("note"):
        lines += ["", f"Note: {meta['note']}"]
    if meta.get("profiled"):
        lines += ["", "**Profiled run (py-spy attached to our services): figures are slowed down.**"]
    lines += ["", table(document["results"]), "### Targets", "", targets(document["results"]), ""]
    lines += [f"![throughput and latency]({chart_name})", ""]
    profile = document.get("profile")
    if profile:
        lines += ["### Profile (py-spy, share of samples)", ""]
        for where, summary in profile.items():
            own = ", ".join(f"{name} {pct}%" for name, pct in summary.get("self_pct", [])[:6])
            paths = ", ".join(f"{name} {pct}%" for name, pct in summary.get("inclusive_pct", [])[:10])
            lines.append(
                f"- {where}: {summary.get('busy_samples', 0)} busy samples ({summary.get('idle_samples', 0)} idle); "
                f"self: {own}; inclusive: {paths}"
            )
        lines.append("")
    return "\n".join(lines)


def write(document: dict[str, Any], out: Path, doc: Path | None = None) -> None:
    chart(document["results"], out / "results.png")
    (out / "results.md").write_text(markdown(document, "results.png"))
    if doc is not None:
        write_doc(document, doc)


DOC_MARK = "<!-- latest run: written by bench/run.py --doc; everything above this line is kept -->"


def write_doc(document: dict[str, Any], doc: Path) -> None:
    """Replace the latest-run part of docs/benchmarks.md (below the mark), keep the hand-written part above."""
    stem = doc.with_suffix("")
    chart(document["results"], stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    head = doc.read_text().split(DOC_MARK)[0] if doc.exists() else "# Benchmarks\n\n"
    body = markdown(document, stem.with_suffix(".png").name)
    doc.write_text(f"{head.rstrip()}\n\n{DOC_MARK}\n\n## Latest run\n\n{body}")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Render results.json again (table, targets, chart).")
    parser.add_argument("results", type=Path)
    parser.add_argument("--doc", type=Path)
    args = parser.parse_args()
    write(json.loads(args.results.read_text()), args.results.parent, doc=args.doc)


if __name__ == "__main__":
    main()
