"""A worker's links stall with the production timings: 10 s reclaim idle, 1 s heartbeats, 30 s outage grace,
500 ms cancel grace, so a fence margin of 3 s (tests/integration/test_partitions.py plays the same cases,
scaled down, in `make test`).

Each case prints when the handler stopped and when the next attempt started on the other worker, counted from
the stall; the runs never overlap. A case takes 20 s (Redis cut) to 45 s (scheduler cut: the outage grace first),
so this runs in `make chaos` only, not in the CI profile.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from resilienttask import AsyncClient
from tests.chaos.profile import current
from tests.conftest import Stores, unique_email
from tests.integration.partition_handler import KIND, STUBBORN_KIND
from tests.integration.partitioned_stack import Partitioned, cut_worker_off, partitioned_stack

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(300),
    pytest.mark.skipif(current().name != "long", reason="production timings: `make chaos` (the long profile) only"),
]

REDIS_DB = 15
# The defaults, named so the figures say what they were measured with.
TIMINGS = {
    "RTASK_WORKER_RECLAIM_IDLE_MS": "10000",
    "RTASK_WORKER_HEARTBEAT_MS": "1000",
    "RTASK_WORKER_OUTAGE_GRACE_MS": "30000",
    "RTASK_WORKER_CANCEL_GRACE_MS": "500",
}
# The first attempt must outlast the outage grace and the fence; it is cancelled once taken over.
WORKLOAD_S = 300.0


@pytest.fixture(scope="module")
def partitioned(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Partitioned]:
    echo = sys.stderr if request.config.getoption("--keep-logs") else None
    with partitioned_stack(stores, tmp_path_factory.mktemp("partitions"), REDIS_DB, TIMINGS, echo) as running:
        yield running


@pytest.fixture
async def user(partitioned: Partitioned) -> AsyncIterator[AsyncClient]:
    partitioned.proxies.resume_all()
    async with AsyncClient(partitioned.stack.edge_address) as sdk:
        await sdk.signup(unique_email("partition"), "correct horse battery")
        yield sdk


@pytest.mark.parametrize(
    ("cut", "kind"),
    [("scheduler", KIND), ("redis", KIND), ("both", KIND), ("both", STUBBORN_KIND)],
    ids=["worker-scheduler", "worker-redis", "worker-both", "worker-both-stubborn-handler"],
)
async def test_with_production_timings_a_cut_off_worker_stops_its_handler_before_the_takeover(
    user: AsyncClient, partitioned: Partitioned, cut: str, kind: str
) -> None:
    takeover = await cut_worker_off(user, partitioned, cut, kind, WORKLOAD_S, cancel=True, takeover_timeout_s=120)
    print(f"\n{takeover}")
