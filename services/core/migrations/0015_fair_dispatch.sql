-- Fair dispatch (docs/fair-sharing.md): why a queued task is held back (Task.wait_reason), and held tasks
-- released the most urgent first, older ones gaining priority as they wait.

-- 0: not held (or only waiting for a free worker); 1: WAIT_REASON_SLOT_SHARE, held for its owner's slot cap.
-- Other reasons are held and released by their own code: the slot-cap release below takes only 0 and 1.
ALTER TABLE tasks ADD COLUMN wait_reason smallint NOT NULL DEFAULT 0;
UPDATE tasks SET wait_reason = 1 WHERE held AND status = 1;

-- Release up to the cap the held tasks of the given owners (locked by the caller), in priority order with
-- aging: each priority level is worth 30 s of waiting, so a task of priority p submitted at t goes before any
-- task whose t' - 30 s * p' is later (a priority-5 task overtakes priority-1 tasks submitted less than 2 min
-- before it, and none waits behind newer work for ever). SKIP LOCKED: a held task some other statement is
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
        SELECT w.id FROM users
        CROSS JOIN LATERAL (
            SELECT t.id FROM tasks AS t
            WHERE t.owner_id = users.id AND t.held AND t.status = 1 AND t.wait_reason IN (0, 1)
            ORDER BY t.created_at - make_interval(secs => 30 * t.priority), t.replica_index, t.id
            LIMIT CASE WHEN cap IS NULL THEN NULL ELSE greatest(0, cap - users.dispatched_tasks) END
            FOR UPDATE OF t SKIP LOCKED
        ) AS w
        WHERE users.id = ANY(owners) AND users.waiting_tasks > 0
    );
    GET DIAGNOSTICS released = ROW_COUNT;
    IF released > 0 THEN
        PERFORM pg_notify('rt_released', '');
    END IF;
    RETURN released;
END
$$;

