-- Delayed tasks (docs and README: "Delayed tasks"): a task submitted with a start in the future is SCHEDULED
-- (status 8) until its run_at, kept here only, never in a dispatch stream; the schedulers' due publisher turns
-- due ones QUEUED and publishes them (services/scheduler/due.py).

-- run_at: when the task was asked to start (NULL: at once); schedule_id: the recurring schedule whose firing
-- submitted it (NULL: submitted by a user), written by the schedule firings.
ALTER TABLE tasks
    ADD COLUMN run_at timestamptz,
    ADD COLUMN schedule_id uuid;

-- The due publisher's lookups: the earliest run_at (how long to sleep) and the due rows, oldest first.
CREATE INDEX tasks_due ON tasks (run_at) WHERE status = 8;

-- The state machine of services/core/transitions/rules.py again, now with SCHEDULED: it becomes QUEUED when due
-- or CANCELLED when cancelled (it never ran, so nothing else); a finished task retried with a delay is SCHEDULED.
CREATE OR REPLACE FUNCTION rt_transition_allowed(from_status smallint, to_status smallint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE from_status
        WHEN 1 THEN to_status IN (2, 5, 6)
        WHEN 2 THEN to_status IN (1, 2, 3, 4, 5, 6, 7)
        WHEN 3 THEN to_status IN (4, 6, 7)
        WHEN 5 THEN to_status IN (1, 8)
        WHEN 6 THEN to_status IN (1, 8)
        WHEN 7 THEN to_status IN (1, 8)
        WHEN 8 THEN to_status IN (1, 6)
        ELSE false
    END
$$;

-- Per-user counters (migration 0008) need no change: active counts statuses 1, 2, 3 and stored counts every row,
-- so a SCHEDULED task is stored but not active; it becomes active in the statement that makes it QUEUED
-- (rt_count_updated), and the due publisher admits it then (services/core/transitions/due.py).

-- Wakes the due publishers (services/scheduler/due.py) for a SCHEDULED task stored with this run_at: the payload is
-- its epoch milliseconds, so a publisher sleeping until a later time wakes at once, and one due to wake earlier
-- anyway ignores it. Sent at commit, so a woken publisher always finds the row. Returns true, for use in a select
-- list (RetryTask with a delay calls it; a statement storing SCHEDULED rows otherwise may too).
CREATE FUNCTION rt_wake_due(run_at timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_notify('rt_scheduled', floor(extract(epoch FROM run_at) * 1000)::bigint::text);
    RETURN true;
END
$$;

-- Every insert of SCHEDULED rows wakes the due publishers, with the earliest run_at it stored. Statement-level:
-- one notification per submission, whatever its replicas.
CREATE FUNCTION rt_notify_scheduled() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    earliest timestamptz;
BEGIN
    SELECT min(run_at) INTO earliest FROM changed WHERE status = 8;
    IF earliest IS NOT NULL THEN
        PERFORM rt_wake_due(earliest);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_scheduled_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS changed
FOR EACH STATEMENT EXECUTE FUNCTION rt_notify_scheduled();
