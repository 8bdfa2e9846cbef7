"""Background loops that end are seen (not running) and started again; the stop ends them for good."""

from __future__ import annotations

import asyncio

from services.core.supervision import LoopSupervisor, RestartPolicy
from tests.helpers import eventually

QUICK = RestartPolicy(first_s=0.01, max_s=0.05, jitter=0.0)


async def test_a_crashed_loop_is_reported_then_started_again() -> None:
    runs: list[int] = []
    crash = asyncio.Event()
    changes: list[bool] = []

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            await crash.wait()
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    supervisor: LoopSupervisor

    async def on_change() -> None:
        changes.append(supervisor.running())

    supervisor = LoopSupervisor([loop], on_change=on_change, policy=QUICK)
    supervisor.start()
    await eventually(lambda: _true(len(runs) == 1))
    assert supervisor.running()
    crash.set()
    await eventually(lambda: _true(len(runs) == 2 and supervisor.running()))
    assert changes[0] is False and changes[-1] is True, "told when it ended and when it was back"
    await supervisor.stop()
    assert not supervisor.running() and len(runs) == 2, "a stopped supervisor restarts nothing"


def test_the_backoff_doubles_up_to_its_ceiling() -> None:
    policy = RestartPolicy(first_s=0.5, max_s=4.0, jitter=0.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    jittered = RestartPolicy(first_s=1.0, max_s=1.0, jitter=0.2)
    assert all(0.8 <= jittered.delay_s(3) <= 1.2 for _ in range(100))


async def _true(value: bool) -> bool:
    return value
