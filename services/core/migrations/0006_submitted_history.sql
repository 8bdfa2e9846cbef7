-- Each task's first history row (submitted: version 1, none -> QUEUED, attempt 0, no worker, fence 0, at
-- created_at) repeats what the task row holds, so it is no longer stored: task_history becomes a view that
-- derives it, over the stored rows of every later transition (task_history_stored). Rows stored before
-- this migration stay, and the view derives the first row only for a task that has none stored.
ALTER TABLE task_history RENAME TO task_history_stored;
ALTER INDEX task_history_task RENAME TO task_history_stored_task;

CREATE OR REPLACE FUNCTION rt_forget_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_history_stored USING gone WHERE task_history_stored.task_id = gone.id;
    RETURN NULL;
END
$$;

CREATE VIEW task_history AS
SELECT task_id, version, from_status, to_status, attempt, worker_id, fence, detail, at FROM task_history_stored
UNION ALL
SELECT tasks.id, 1::bigint, NULL::smallint, 1::smallint, 0, ''::text, 0::bigint, 'submitted'::text, tasks.created_at
FROM tasks
WHERE NOT EXISTS (SELECT 1 FROM task_history_stored AS h WHERE h.task_id = tasks.id AND h.version = 1);
