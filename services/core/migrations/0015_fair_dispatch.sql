-- Fair dispatch (docs/fair-sharing.md): why a queued task is held back (Task.wait_reason), and held tasks
-- released the most urgent first, older ones gaining priority as they wait.

-- 0: not held (or only waiting for a free worker); 1: WAIT_REASON_SLOT_SHARE, held for its owner's slot cap.
-- Other reasons are held and released by their own code: the slot-cap release below takes only 0 and 1.
ALTER TABLE tasks ADD COLUMN wait_reason smallint NOT NULL DEFAULT 0;
UPDATE tasks SET wait_reason = 1 WHERE held AND status = 1;

-- Held tasks by owner and priority, oldest first within a level: each level's next candidates are one index
-- range scan (this replaces the owner's oldest-first index of migration 0008).
CREATE INDEX tasks_waiting_by_priority ON tasks (owner_id, priority, created_at, replica_index, id)
    WHERE held AND status = 1;
DROP INDEX tasks_waiting;

-- Release up to the cap the held tasks of the given owners (locked by the caller), in priority order with
-- aging: each priority level is worth 30 s of waiting, so a task of priority p submitted at t goes before any
-- task whose t' - 30 s * p' is later (a priority-5 task overtakes priority-1 tasks submitted less than 2 min
-- before it, and none waits behind newer work for ever). The order is a merge of each level's oldest tasks
-- (index scans, never a sort of the owner's whole backlog). SKIP LOCKED: a held task some other statement is
-- changing (a cancel) is left for the next release, never waited for, so this cannot deadlock with a cancel
-- that locked it first. Wakes the schedulers' sweepers to publish them.
CREATE OR REPLACE FUNCTION rt_release(owners uuid[]) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cap integer;
    released integer;
BEGIN
    SELECT slots_per_user INTO cap FROM slot_cap;
    UPDATE tasks SET held = false, wait_reason = 0, publish_after = now()
    WHERE tasks.id IN (
        SELECT locked.id FROM tasks AS locked
        WHERE locked.id IN (
            SELECT w.id FROM users
            CROSS JOIN LATERAL (SELECT CASE WHEN cap IS NULL THEN NULL ELSE greatest(0, cap - users.dispatched_tasks) END
                                AS room) AS r
            CROSS JOIN LATERAL (
                SELECT c.id FROM generate_series(1, 5) AS level(priority)
                CROSS JOIN LATERAL (
                    SELECT t.id, t.created_at, t.replica_index FROM tasks AS t
                    WHERE t.owner_id = users.id AND t.priority = level.priority AND t.held AND t.status = 1
                        AND t.wait_reason IN (0, 1)
                    ORDER BY t.created_at, t.replica_index, t.id
                    LIMIT r.room
                ) AS c
                ORDER BY c.created_at - make_interval(secs => 30 * level.priority), c.replica_index, c.id
                LIMIT r.room
            ) AS w
            WHERE users.id = ANY(owners) AND users.waiting_tasks > 0
        )
        AND locked.held AND locked.status = 1
        FOR UPDATE SKIP LOCKED
    );
    GET DIAGNOSTICS released = ROW_COUNT;
    IF released > 0 THEN
        PERFORM pg_notify('rt_released', '');
    END IF;
    RETURN released;
END
$$;
