"""Per-user limits: how much of the shared system one user may take (docs/limits.md).

The gateways enforce the counts and the rate at submission (in the submit statement itself, migration 0008) and
the watch streams when one opens; the schedulers turn the slot share into the cap they publish to PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from services.core.settings import ConfigError, setting


@dataclass(frozen=True)
class UserLimits:
    """Each count limit is per user; 0 turns that limit off."""

    # Queued + running tasks at once: bounds one user's share of the queues and of the dispatch streams.
    max_active_tasks: int = setting(
        "RTASK_LIMIT_MAX_ACTIVE_TASKS", 5_000, "per user: queued + running tasks at once; 0: no limit"
    )
    # Stored task rows, finished ones included: bounds one user's share of PostgreSQL.
    max_stored_tasks: int = setting(
        "RTASK_LIMIT_MAX_STORED_TASKS", 50_000, "per user: stored tasks, finished ones included; 0: no limit"
    )
    # Submissions (replicas count one each, as do retries), refilled at this rate, up to the burst.
    submit_rate_per_s: float = setting(
        "RTASK_LIMIT_SUBMIT_RATE_PER_S",
        50.0,
        "per user: tasks submitted per second (replicas and retries count); 0: no limit",
    )
    submit_burst: int = setting("RTASK_LIMIT_SUBMIT_BURST", 500, "per user: the burst of that submission rate")
    # WatchTasks streams open at once, across every gateway.
    max_watch_streams: int = setting(
        "RTASK_LIMIT_MAX_WATCH_STREAMS", 20, "per user: `WatchTasks` streams open at once, across gateways"
    )
    # Share of the live worker slots one user's tasks may hold at once; the rest wait queued. 1 or more: no cap.
    slot_share: float = setting(
        "RTASK_LIMIT_SLOT_SHARE",
        0.5,
        "share of the live worker slots one user's tasks may hold at once (1 or more: no cap)",
    )
    # Below that ceiling, a max-min fair share of the live slots between the owners with active tasks: when their
    # demand exceeds the pool, each owner's cap is the level that shares the slots out (owners wanting less keep
    # what they want), so one owner's backlog waits in PostgreSQL and a newcomer's task is not queued behind it.
    fair_share: bool = setting(
        "RTASK_LIMIT_FAIR_SHARE",
        True,
        "lower that cap to a max-min fair share between the users with active tasks (docs/fair-sharing.md)",
    )
    # Added to the fair level, as a share of the live slots: work queued in the streams ahead of the free slots,
    # so workers never wait for a release to travel (at the price of that much FIFO order between owners).
    fair_headroom_share: float = setting(
        "RTASK_LIMIT_FAIR_HEADROOM_SHARE",
        0.5,
        "added to the fair share, as a share of the live slots: work kept queued in the streams ahead of free slots",
    )
    # Recurring schedules stored at once: each one fires on its own, so it bounds one user's share of the firing.
    max_schedules: int = setting(
        "RTASK_LIMIT_MAX_SCHEDULES", 100, "per user: recurring schedules stored at once (paused ones included)"
    )
    # Not a per-user limit: it bounds what one call holds at once.
    clear_history_page: int = setting(
        "RTASK_LIMIT_CLEAR_HISTORY_PAGE", 500, "finished tasks ClearHistory deletes and announces per transaction"
    )

    def __post_init__(self) -> None:
        for name in ("max_active_tasks", "max_stored_tasks", "submit_burst", "max_watch_streams", "max_schedules"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{env_name(name)} must not be negative")
        if self.clear_history_page < 1:
            raise ConfigError(f"{env_name('clear_history_page')} must be at least 1")
        if not math.isfinite(self.submit_rate_per_s) or self.submit_rate_per_s < 0:
            raise ConfigError(f"{env_name('submit_rate_per_s')} must be a finite number, not negative")
        if self.submit_rate_per_s > 0 and self.submit_burst < 1:
            raise ConfigError(f"{env_name('submit_burst')} must be at least 1 when a submission rate is set")
        if not math.isfinite(self.slot_share) or self.slot_share <= 0:
            raise ConfigError(f"{env_name('slot_share')} must be a positive number (1 or more: no cap)")
        if not math.isfinite(self.fair_headroom_share) or self.fair_headroom_share < 0:
            raise ConfigError(f"{env_name('fair_headroom_share')} must be a finite number, not negative")

    def slots_per_user(self, live_slots: int, demands: Sequence[int] = ()) -> int | None:
        """The most slots one user's tasks may hold in a pool of live_slots; None when there is no cap.

        demands: the active (queued or running) tasks of each owner that has some. The cap is the slot share's
        ceiling, lowered to the max-min fair level plus the headroom when fair sharing is on. At least one, so
        a user is never left with nothing to run, even in a pool of one slot.
        """
        ceiling = self.slot_ceiling(live_slots)
        if not self.fair_share:
            return ceiling
        fair = fair_level(live_slots, demands) + math.ceil(self.fair_headroom_share * live_slots)
        return max(1, fair if ceiling is None else min(ceiling, fair))

    def slot_ceiling(self, live_slots: int) -> int | None:
        """The fixed ceiling alone (RTASK_LIMIT_SLOT_SHARE of the pool, at least one); None when there is none. It
        holds an owner alone in the pool too: the fair share lets that owner's burst through (to the surplus lane),
        never this."""
        return None if self.slot_share >= 1 else max(1, math.floor(self.slot_share * live_slots))

    @classmethod
    def unlimited(cls) -> UserLimits:
        """Every limit off: for benchmarks and tests that measure one user's throughput on purpose."""
        return cls(
            max_active_tasks=0,
            max_stored_tasks=0,
            submit_rate_per_s=0,
            submit_burst=0,
            max_watch_streams=0,
            slot_share=1,
            fair_share=False,
            max_schedules=0,
        )

    def to_env(self) -> dict[str, str]:
        """The RTASK_LIMIT_* variables that give these limits to a process (what the loader reads back)."""
        return {env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}


def fair_level(slots: int, demands: Sequence[int]) -> int:
    """The max-min fair share of slots between owners wanting `demands` (water filling): owners wanting less
    than an equal share keep what they want, the rest split what is left. All of the slots when every demand
    fits, so a lone owner may use the whole pool."""
    remaining, wanting = float(slots), sorted(d for d in demands if d > 0)
    for index, demand in enumerate(wanting):
        share = remaining / (len(wanting) - index)
        if demand > share:
            return math.ceil(share)
        remaining -= demand
    return slots


def env_name(field: str) -> str:
    """RTASK_LIMIT_<FIELD>, e.g. RTASK_LIMIT_MAX_ACTIVE_TASKS."""
    return f"RTASK_LIMIT_{field.upper()}"
