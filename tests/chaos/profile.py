"""How big a chaos run is: a short one for CI (`make chaos-ci`) and a long one (`make chaos`).

Chosen by RTASK_CHAOS_PROFILE (`ci`, the default, or `long`); RTASK_CHAOS_REPORT names a file the run's
report is written to, RTASK_CHAOS_COMMAND the command line the report says it came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ChaosProfile:
    name: str
    # -- the fault run ---------------------------------------------------------------------------------------
    users: int
    tasks: int
    watchers_per_user: int
    workers: int
    # Each entry is one fault, injected in this order while tasks are being submitted.
    faults: tuple[str, ...]
    # How long a stopped store or Envoy stays down before it is started again.
    outage_s: float
    # Submissions are spread evenly over this span, while the faults are injected.
    submit_span_s: float
    # -- the sustained run -----------------------------------------------------------------------------------
    soak_s: float
    soak_watchers: int
    soak_tasks_per_s: float
    memory_sample_every_s: float
    # Generous guard for a whole test; never a measure of speed.
    test_timeout_s: int


CI = ChaosProfile(
    name="ci",
    users=4,
    tasks=240,
    watchers_per_user=2,
    workers=3,
    faults=(
        "kill-worker",
        "kill-gateway",
        "restart-valkey",
        "kill-scheduler",
        "kill-worker",
        "restart-postgres",
        "restart-envoy",
    ),
    outage_s=2.0,
    submit_span_s=60.0,
    soak_s=50.0,
    soak_watchers=40,
    soak_tasks_per_s=8.0,
    memory_sample_every_s=2.0,
    test_timeout_s=420,
)

LONG = ChaosProfile(
    name="long",
    users=6,
    tasks=2000,
    watchers_per_user=3,
    workers=4,
    faults=(
        "kill-worker",
        "kill-gateway",
        "kill-worker",
        "restart-valkey",
        "kill-worker",
        "kill-scheduler",
        "kill-worker",
        "restart-postgres",
        "kill-worker",
        "restart-envoy",
        "kill-worker",
        "kill-gateway",
        "kill-worker",
        "restart-valkey",
        "kill-worker",
        "kill-scheduler",
        "kill-worker",
        "restart-postgres",
        "kill-worker",
        "restart-envoy",
    ),
    outage_s=3.0,
    submit_span_s=300.0,
    soak_s=300.0,
    soak_watchers=200,
    soak_tasks_per_s=15.0,
    memory_sample_every_s=5.0,
    test_timeout_s=2400,
)


def current() -> ChaosProfile:
    name = os.environ.get("RTASK_CHAOS_PROFILE", "ci")
    profiles = {p.name: p for p in (CI, LONG)}
    if name not in profiles:
        raise ValueError(f"RTASK_CHAOS_PROFILE must be one of {sorted(profiles)}, got {name!r}")
    return profiles[name]


def report_path() -> str | None:
    return os.environ.get("RTASK_CHAOS_REPORT") or None


def command() -> str:
    return os.environ.get("RTASK_CHAOS_COMMAND", f"RTASK_CHAOS_PROFILE={current().name} pytest -m chaos tests/chaos")
