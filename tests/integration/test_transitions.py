"""The state machine as the database enforces it: every (from, to) pair, the version bump, history cleanup."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from resilienttask.v1 import task_pb2
from services.core import task_store
from services.core.db import migrate
from services.core.errors import translate_errors
from services.core.task_model import in_batch, status_name
from services.core.transitions import user as transitions
from services.core.transitions.rules import ALLOWED_TRANSITIONS
from tests.conftest import Stores
from tests.databases import create_database

STATUSES = sorted(ALLOWED_TRANSITIONS)


@pytest.fixture
async def database(stores: Stores) -> str:
    """A freshly migrated database of its own."""
    url = await create_database(stores.database_url, "transitions")
    connection = await asyncpg.connect(url)
    await migrate(connection)
    await connection.close()
    return url


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    try:
        yield connection
    finally:
        await connection.close()


async def new_user(conn: asyncpg.Connection | asyncpg.Pool) -> str:
    owner = str(uuid.uuid4())
    await conn.execute("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')", owner, f"{owner}@t.io")
    return owner


async def new_task(
    conn: asyncpg.Connection | asyncpg.Pool,
    status: int,
    *,
    owner: str = "",
    request_id: str = "",
    batch_id: str = "",
    replica_index: int = 0,
) -> str:
    """A task row written directly, as a shipped version (or a test of the database alone) would."""
    task_id = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO tasks (id, owner_id, name, kind, status, max_attempts, request_id, batch_id, replica_index, "
        "workload_ms, max_runtime_ms, dispatch_id) VALUES ($1, $2, 't', 'sleep', $3, 3, $4, $5, $6, 0, 1000, $7)",
        task_id,
        owner or await new_user(conn),
        status,
        request_id or str(uuid.uuid4()),
        batch_id or str(uuid.uuid4()),
        replica_index,
        str(uuid.uuid4()),
    )
    return task_id


async def test_every_status_pair_is_allowed_exactly_when_the_table_says(conn: asyncpg.Connection) -> None:
    assert [s for s in task_pb2.TaskStatus.values() if s != task_pb2.TASK_STATUS_UNSPECIFIED] == STATUSES
    wrong = []
    for before, after in itertools.product(STATUSES, STATUSES):
        if before == after:
            continue  # not a status change: the database has nothing to check (RUNNING -> RUNNING is a reclaim)
        task_id = await new_task(conn, before)
        try:
            await conn.execute("UPDATE tasks SET status = $2 WHERE id = $1", task_id, after)
            refused = False
        except asyncpg.PostgresError as exc:
            assert exc.sqlstate == "RT002", exc
            refused = True
        if refused == (after in ALLOWED_TRANSITIONS[before]):
            wrong.append(f"{status_name(before)} -> {status_name(after)}: {'refused' if refused else 'allowed'}")
    assert not wrong, wrong


async def test_version_moves_with_every_visible_change_and_only_then(conn: asyncpg.Connection) -> None:
    task_id = await new_task(conn, task_pb2.TASK_STATUS_RUNNING)

    async def version() -> int:
        return int(await conn.fetchval("SELECT version FROM tasks WHERE id = $1", task_id))

    assert await version() == 1
    await conn.execute("UPDATE tasks SET progress = 0.5 WHERE id = $1", task_id)
    assert await version() == 2
    await conn.execute("UPDATE tasks SET entry_id = 'sleep:1-1', published = true WHERE id = $1", task_id)
    assert await version() == 2, "publication bookkeeping is not a change users see"
    await conn.execute("UPDATE tasks SET progress = 0.5 WHERE id = $1", task_id)
    assert await version() == 2, "writing the same value changes nothing"
    await conn.execute(
        "UPDATE tasks SET status = $2, version = 100 WHERE id = $1", task_id, task_pb2.TASK_STATUS_SUCCEEDED
    )
    assert await version() == 3, "nobody sets the version by hand"


async def test_history_goes_with_its_task_however_it_is_deleted(conn: asyncpg.Connection) -> None:
    kept, deleted, owner_gone = [await new_task(conn, task_pb2.TASK_STATUS_SUCCEEDED) for _ in range(3)]
    for task_id in (kept, deleted, owner_gone):
        await conn.execute(
            "INSERT INTO task_history_stored (task_id, version, to_status, attempt) VALUES ($1, 2, 2, 1)", task_id
        )
    await conn.execute("DELETE FROM tasks WHERE id = $1", deleted)
    await conn.execute("DELETE FROM users WHERE id = (SELECT owner_id FROM tasks WHERE id = $1)", owner_gone)
    stored = await conn.fetch("SELECT task_id FROM task_history_stored")
    assert [str(r["task_id"]) for r in stored] == [kept]
    shown = await conn.fetch("SELECT task_id, version FROM task_history ORDER BY version")
    assert [(str(r["task_id"]), r["version"]) for r in shown] == [(kept, 1), (kept, 2)]


async def test_the_submitted_row_is_derived_as_it_was_stored_and_never_twice(database: str) -> None:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    assert pool is not None
    try:
        owner = await new_user(pool)
        spec = transitions.Submission("t", "sleep", {}, 0, 1000, 1, 3, str(uuid.uuid4()))
        (row,), _ = await transitions.submit(pool, owner, spec)
        # A task submitted before migration 0006, whose first row was stored.
        old = await new_task(pool, task_pb2.TASK_STATUS_QUEUED, owner=owner)
        await pool.execute(
            "INSERT INTO task_history_stored (task_id, version, from_status, to_status, attempt, detail, at) "
            "SELECT id, 1, NULL, 1, 0, 'submitted', created_at FROM tasks WHERE id = $1",
            old,
        )
        for task_id in (row["id"], old):
            history = await pool.fetch(
                "SELECT h.*, t.created_at FROM task_history h JOIN tasks t ON t.id = h.task_id WHERE task_id = $1",
                task_id,
            )
            assert len(history) == 1
            first = history[0]
            assert (first["version"], first["from_status"], first["to_status"], first["attempt"]) == (1, None, 1, 0)
            assert (first["worker_id"], first["fence"], first["detail"]) == ("", 0, "submitted")
            assert first["at"] == first["created_at"]
        assert not await pool.fetchval("SELECT count(*) FROM task_history_stored WHERE task_id = $1", row["id"])
    finally:
        await pool.close()


class _Aborted(Exception):
    """What context.abort raised, with the status it was given."""


class _Context:
    code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise _Aborted(details)


async def test_a_refusal_by_the_database_reaches_the_caller_as_failed_precondition(conn: asyncpg.Connection) -> None:
    task_id = await new_task(conn, task_pb2.TASK_STATUS_SUCCEEDED)

    class Servicer:
        @translate_errors
        async def Rerun(self, request: object, context: grpc.aio.ServicerContext) -> None:
            await conn.execute("UPDATE tasks SET status = $2 WHERE id = $1", task_id, task_pb2.TASK_STATUS_RUNNING)

    context = _Context()
    with pytest.raises(_Aborted):
        await Servicer().Rerun(None, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_batches_are_found_without_an_index_on_batch_id_old_and_new(database: str) -> None:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    assert pool is not None
    try:
        owner, other = await new_user(pool), await new_user(pool)
        spec = transitions.Submission("t", "sleep", {}, 0, 1000, 3, 3, str(uuid.uuid4()))
        new_rows, _ = await transitions.submit(pool, owner, spec)
        await transitions.submit(pool, other, spec)  # the same request_id, another owner
        new_batch = str(new_rows[0]["batch_id"])
        assert new_batch == str(new_rows[0]["id"]) and {str(r["batch_id"]) for r in new_rows} == {new_batch}
        # A batch submitted before migration 0005: a batch id that is no task's id.
        old_batch, old_request = str(uuid.uuid4()), str(uuid.uuid4())
        old_ids = {
            await new_task(
                pool,
                task_pb2.TASK_STATUS_QUEUED,
                owner=owner,
                request_id=old_request,
                batch_id=old_batch,
                replica_index=i,
            )
            for i in range(2)
        }
        for batch, expected in ((new_batch, {str(r["id"]) for r in new_rows}), (old_batch, old_ids)):
            listed = await task_store.list_page(pool, owner, status=0, batch_id=batch, limit=10, after=None)
            assert {str(r["id"]) for r in listed} == expected
            assert not await task_store.list_page(pool, other, status=0, batch_id=batch, limit=10, after=None)
            assert not (await transitions.cancel(pool, other, batch_id=batch)).rows
            cancelled = await transitions.cancel(pool, owner, batch_id=batch)
            assert {str(r["id"]) for r in cancelled.rows} == expected
            assert {r["status"] for r in cancelled.rows} == {task_pb2.TASK_STATUS_CANCELLED}
        # An owner with many tasks, so the plan is the one a real table gets.
        await pool.execute(
            "INSERT INTO tasks (id, owner_id, name, kind, status, max_attempts, request_id, batch_id, "
            "replica_index, workload_ms, max_runtime_ms, dispatch_id) SELECT gen_random_uuid(), $1, 't', 'sleep', "
            "4, 1, i::text, gen_random_uuid(), 0, 0, 1000, gen_random_uuid() FROM generate_series(1, 5000) AS i",
            owner,
        )
        await pool.execute("ANALYZE tasks")
        explained = await pool.fetch(
            f"EXPLAIN SELECT id FROM tasks WHERE owner_id = $1 AND {in_batch('$1', '$2::uuid')}", owner, old_batch
        )
        plan = "\n".join(r[0] for r in explained)
        assert "Seq Scan" not in plan and "tasks_owner_recent" not in plan, plan
        assert "tasks_owner_batch_legacy" in plan and "tasks_pkey" in plan, plan
    finally:
        await pool.close()
