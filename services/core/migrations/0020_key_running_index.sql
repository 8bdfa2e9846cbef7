-- The running count of a concurrency key (rt_key_room, migration 0019), made by every start of a keyed task and
-- by every checked start, through an index of running and cancelling tasks only. tasks_keyed (migration 0016)
-- also holds every queued task of the key, and the entries of every version of a task since the last vacuum: the
-- count, made under the key's start lock, read the owner's whole range of it, a backlog of queued tasks and the
-- dead entries of the tasks that ran, each checked in the table (an index-only scan never marks an entry dead).
-- With 5,000 keyed tasks in ten keys, 4,000 of them started and ended ten at a time, a start counting three keys
-- read 410 pages and checked about a thousand rows (0.6 to 2.6 ms); through this index, 77 pages (0.1 ms).
CREATE INDEX tasks_key_running ON tasks (owner_id, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND status IN (2, 3);
