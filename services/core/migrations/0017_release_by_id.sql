-- The slot-share release (migration 0015) picks its candidates first and then locks and updates them by id.
-- As one statement, the planner joined the candidates back to tasks with sequential scans of the whole table
-- (twice), some tens of milliseconds per call on a table of a few thousand rows, and more as it grows. It runs
-- in the trigger of every statement that ends an owner's task while that owner has held tasks, with the
-- owner's users row locked, so every end of that owner waited for it. By id, each step is an index scan.
-- Same order, same room, same SKIP LOCKED: a held task some other statement is changing is left for the next
-- release, never waited for.
CREATE OR REPLACE FUNCTION rt_release(owners uuid[]) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cap integer;
    candidates uuid[];
    released integer;
BEGIN
    SELECT slots_per_user INTO cap FROM slot_cap;
    SELECT array_agg(w.id) INTO candidates FROM users
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
    WHERE users.id = ANY(owners) AND users.waiting_tasks > 0;
    IF candidates IS NULL THEN
        RETURN 0;
    END IF;
    -- A fresh snapshot: a candidate another statement changed meanwhile (cancelled, released) is checked again.
    UPDATE tasks SET held = false, wait_reason = 0, publish_after = now()
    FROM (
        SELECT locked.id FROM tasks AS locked
        WHERE locked.id = ANY(candidates) AND locked.held AND locked.status = 1 AND locked.wait_reason IN (0, 1)
        ORDER BY locked.id
        FOR UPDATE SKIP LOCKED
    ) AS l
    WHERE tasks.id = l.id;
    GET DIAGNOSTICS released = ROW_COUNT;
    IF released > 0 THEN
        PERFORM pg_notify('rt_released', '');
    END IF;
    RETURN released;
END
$$;

-- A start's check of concurrency keys in one round trip (services/core/transitions/gates.py): each key's lock,
-- exclusive, in order, then the count of the keys' RUNNING and CANCELLING tasks in a statement of its own, whose
-- fresh snapshot sees every start and end of these keys that committed before the locks were granted.
CREATE FUNCTION rt_key_running(owners uuid[], keys text[])
RETURNS TABLE (owner_id uuid, concurrency_key text, running bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(l) FROM (
        SELECT DISTINCT rt_key_lock(o, k) AS l FROM unnest(owners, keys) AS u(o, k)
    ) AS s ORDER BY l;
    RETURN QUERY SELECT t.owner_id, t.concurrency_key, count(*) FROM tasks AS t
        WHERE (t.owner_id, t.concurrency_key) IN (SELECT * FROM unnest(owners, keys))
        AND t.concurrency_key IS NOT NULL AND t.status IN (2, 3)
        GROUP BY t.owner_id, t.concurrency_key;
END
$$;
