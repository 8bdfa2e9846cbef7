"""Task bodies that log, for the tests of live logs (tests/integration/test_task_logs.py) and bench/logs.py.

The session stack's workers import this module (tests/conftest.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from resilienttask.handlers import TaskContext, task

GATED = "test.logs.gated"
BURST = "test.logs.burst"
# How often the gated handler looks for its gate file (the test creates it; the test itself never sleeps).
GATE_POLL_S = 0.02


@task(GATED, process=True)
def gated(ctx: TaskContext) -> dict[str, Any]:
    """Logs on each stream, then waits until the file named by payload `gate` exists, then logs again."""
    print("out-1 before the gate")
    print("err-1 before the gate", file=sys.stderr)
    ctx.log.info("logger-1 before the gate")
    gate = str(ctx.payload["gate"])
    while not os.path.exists(gate):
        if ctx.wait_cancelled(GATE_POLL_S):
            return {"gated": False}
    print("out-2 after the gate")
    ctx.log.warning("logger-2 after the gate")
    return {"gated": True}


@task(BURST, process=True)
def burst(ctx: TaskContext) -> dict[str, Any]:
    """Prints payload `lines` numbered lines to stdout as fast as it can."""
    count = int(ctx.payload.get("lines", 0))
    for i in range(count):
        print(f"line {i}")
    return {"printed": count}
