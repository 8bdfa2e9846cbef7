-- Per-user limits (docs/limits.md): what each user holds is counted on their users row, kept by the database
-- whatever statement changes a task, so admission reads a counter instead of counting rows; and a cap on the
-- worker slots one user's tasks may hold, applied at dispatch.

-- active: queued or running (1, 2, 3); stored: every row; dispatched: active and let through to the dispatch
-- streams; waiting: queued and held back by the slot cap. The token bucket of submissions (tasks per second)
-- is refilled when read: submit_tokens as of submit_tokens_at (NULL: full).
ALTER TABLE users
    ADD COLUMN active_tasks integer NOT NULL DEFAULT 0,
    ADD COLUMN stored_tasks integer NOT NULL DEFAULT 0,
    ADD COLUMN dispatched_tasks integer NOT NULL DEFAULT 0,
    ADD COLUMN waiting_tasks integer NOT NULL DEFAULT 0,
    ADD COLUMN submit_tokens double precision,
    ADD COLUMN submit_tokens_at timestamptz;

-- A held task is queued but not published: its owner's tasks already hold their share of the slots. It is
-- released (held = false, publish_after = now()) when one of them ends, or by the scheduler's sweeper.
ALTER TABLE tasks ADD COLUMN held boolean NOT NULL DEFAULT false;
CREATE INDEX tasks_waiting ON tasks (owner_id, created_at, replica_index, id) WHERE held AND status = 1;

-- The most slots one user's tasks may hold at once, written by the schedulers from the live pool
-- (RTASK_LIMIT_SLOT_SHARE of its slots); NULL: no cap.
CREATE TABLE slot_cap (
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    slots_per_user integer
);
INSERT INTO slot_cap (single, slots_per_user) VALUES (true, NULL);

UPDATE users SET
    active_tasks = c.active, stored_tasks = c.stored, dispatched_tasks = c.active
FROM (
    SELECT owner_id, count(*) FILTER (WHERE status IN (1, 2, 3)) AS active, count(*) AS stored
    FROM tasks GROUP BY owner_id
) AS c
WHERE users.id = c.owner_id;

-- The refusal raised by a limit, naming it (RESOURCE_EXHAUSTED at the gRPC boundary).
CREATE FUNCTION rt_limit(reason text) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'RT003', MESSAGE = reason;
END
$$;

-- Admission of n tasks for owner (new_rows of them new rows), called by the submit and retry statements before
-- they write. The owner's row is locked first, so two submissions of one user are admitted one after the
-- other and cannot both take the last free place; the counters read under the lock are the latest committed
-- (the lock waits for the other's commit, and returns the row as it committed it). Limits of 0 are off.
-- Returns how many of the n may be dispatched now (the rest wait, held, for the slot cap).
CREATE FUNCTION rt_admit(
    owner uuid, request text, n integer, new_rows integer,
    max_active integer, max_stored integer, rate_per_s double precision, burst integer
) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    u record;
    tokens double precision;
    cap integer;
BEGIN
    SELECT active_tasks, stored_tasks, dispatched_tasks, submit_tokens, submit_tokens_at INTO u
    FROM users WHERE id = owner FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN n;  -- the insert's foreign key refuses it
    END IF;
    IF request <> '' AND EXISTS (SELECT 1 FROM tasks WHERE owner_id = owner AND request_id = request) THEN
        RETURN n;  -- a repeated request adds nothing: its first tasks are returned, whatever the limits now
    END IF;
    IF max_active > 0 AND u.active_tasks + n > max_active THEN
        PERFORM rt_limit(format('active tasks: at most %s queued or running per user; %s now, %s more asked',
                                max_active, u.active_tasks, n));
    END IF;
    IF max_stored > 0 AND u.stored_tasks + new_rows > max_stored THEN
        PERFORM rt_limit(format('stored tasks: at most %s per user, finished ones included; %s now, %s more '
                                'asked (delete tasks or clear the history)', max_stored, u.stored_tasks, new_rows));
    END IF;
    IF rate_per_s > 0 THEN
        tokens := least(burst, coalesce(u.submit_tokens, burst)
            + greatest(0, extract(epoch FROM clock_timestamp() - u.submit_tokens_at)) * rate_per_s);
        IF tokens IS NULL THEN
            tokens := burst;
        END IF;
        IF tokens < n THEN
            PERFORM rt_limit(format('submission rate: at most %s tasks per second per user, in bursts of up to %s; '
                                    '%s asked, room for %s now', rate_per_s, burst, n, floor(tokens)));
        END IF;
        UPDATE users SET submit_tokens = tokens - n, submit_tokens_at = clock_timestamp() WHERE id = owner;
    END IF;
    SELECT slots_per_user INTO cap FROM slot_cap;
    IF cap IS NULL THEN
        RETURN n;
    END IF;
    RETURN least(n, greatest(0, cap - u.dispatched_tasks));
END
$$;

-- Release up to the cap the oldest held tasks of the given owners (locked by the caller). SKIP LOCKED: a held
-- task some other statement is changing (a cancel) is left for the next release, never waited for, so
-- this cannot deadlock with a cancel that locked it first. Wakes the schedulers' sweepers to publish them.
CREATE FUNCTION rt_release(owners uuid[]) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cap integer;
    released integer;
BEGIN
    SELECT slots_per_user INTO cap FROM slot_cap;
    UPDATE tasks SET held = false, publish_after = now()
    WHERE tasks.id IN (
        SELECT w.id FROM users
        CROSS JOIN LATERAL (
            SELECT t.id FROM tasks AS t
            WHERE t.owner_id = users.id AND t.held AND t.status = 1
            ORDER BY t.created_at, t.replica_index, t.id
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

-- The counters follow the rows. Statement-level, so a batch of 500 finishes updates each owner's row once;
-- owners' rows are locked in id order, as task rows are, so two statements cannot deadlock on them.
-- Inserted rows count up, deleted rows down: one function, the sign from the operation; both triggers name
-- their transition table `changed`.
CREATE FUNCTION rt_count_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sign integer := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    UPDATE users SET
        active_tasks = users.active_tasks + sign * d.active,
        stored_tasks = users.stored_tasks + sign * d.stored,
        dispatched_tasks = users.dispatched_tasks + sign * d.dispatched,
        waiting_tasks = users.waiting_tasks + sign * d.waiting
    FROM (
        SELECT owner_id, count(*) AS stored,
            count(*) FILTER (WHERE status IN (1, 2, 3)) AS active,
            count(*) FILTER (WHERE status IN (1, 2, 3) AND NOT held) AS dispatched,
            count(*) FILTER (WHERE status = 1 AND held) AS waiting
        FROM changed GROUP BY owner_id ORDER BY owner_id
    ) AS d
    WHERE users.id = d.owner_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_counted_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS changed
FOR EACH STATEMENT EXECUTE FUNCTION rt_count_rows();

CREATE TRIGGER tasks_counted_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS changed
FOR EACH STATEMENT EXECUTE FUNCTION rt_count_rows();

-- Only rows whose status or held flag changed count (progress and publication marks change neither, and a
-- start keeps a task active and dispatched, so those statements write no users row). When an owner's
-- dispatched count fell (a task ended, or a queued one was cancelled), their next held tasks are released.
CREATE FUNCTION rt_count_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    freed uuid[];
BEGIN
    WITH d AS (
        SELECT n.owner_id,
            sum((n.status IN (1, 2, 3))::int - (o.status IN (1, 2, 3))::int) AS active,
            sum((n.status IN (1, 2, 3) AND NOT n.held)::int - (o.status IN (1, 2, 3) AND NOT o.held)::int)
                AS dispatched,
            sum((n.status = 1 AND n.held)::int - (o.status = 1 AND o.held)::int) AS waiting
        FROM after_rows AS n JOIN before_rows AS o ON o.id = n.id
        WHERE n.status <> o.status OR n.held <> o.held
        GROUP BY n.owner_id
    ),
    changed AS (SELECT * FROM d WHERE active <> 0 OR dispatched <> 0 OR waiting <> 0),
    locked AS (
        SELECT users.id FROM users JOIN changed ON users.id = changed.owner_id
        ORDER BY users.id FOR NO KEY UPDATE OF users
    ),
    counted AS (
        UPDATE users SET
            active_tasks = users.active_tasks + changed.active,
            dispatched_tasks = users.dispatched_tasks + changed.dispatched,
            waiting_tasks = users.waiting_tasks + changed.waiting
        FROM changed JOIN locked ON locked.id = changed.owner_id
        WHERE users.id = changed.owner_id
        RETURNING users.id, changed.dispatched < 0 AND users.waiting_tasks > 0 AS freed
    )
    SELECT array_agg(id) FILTER (WHERE counted.freed) INTO freed FROM counted;
    IF freed IS NOT NULL THEN
        PERFORM rt_release(freed);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_counted_update AFTER UPDATE ON tasks REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
FOR EACH STATEMENT EXECUTE FUNCTION rt_count_updated();

-- The sweeper's release: owners with held tasks and room under the cap (the cap grew, a worker joined, or a
-- release skipped a locked task). Owners are locked in id order, skipping any being changed right now.
CREATE FUNCTION rt_release_waiting(max_owners integer) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cap integer;
    owners uuid[];
BEGIN
    SELECT slots_per_user INTO cap FROM slot_cap;
    SELECT array_agg(id) INTO owners FROM (
        SELECT id FROM users
        WHERE waiting_tasks > 0 AND (cap IS NULL OR dispatched_tasks < cap)
        ORDER BY id LIMIT max_owners FOR NO KEY UPDATE SKIP LOCKED
    ) AS o;
    IF owners IS NULL THEN
        RETURN 0;
    END IF;
    RETURN rt_release(owners);
END
$$;

CREATE INDEX users_waiting ON users (id) WHERE waiting_tasks > 0;
