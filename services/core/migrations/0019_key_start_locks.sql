-- Concurrency keys without starts and ends waiting for each other (docs/fair-sharing.md). Each key had one
-- advisory lock, taken exclusively by every start (to count the key's running tasks one start after the other)
-- and by every end (its release trigger: a start about to hold a task must commit before the end looks for held
-- tasks, or count the end). Held until commit, so every start and every end of a key waited for the commit of
-- the one before, a WAL flush each. Two locks per key now:
-- - the start lock (rt_key_start_lock): every start takes it exclusively before it counts; starts are still
--   counted one after the other. Ends never take it: an end only lowers the count, and a start that counted the
--   ending task as running starts fewer, never more.
-- - the end lock (rt_key_lock, as before): an end takes it shared (ends no longer wait for each other); a start
--   takes it exclusively only when it must hold a task (the checked path's second pass, after its owners'
--   rows), so it still commits before an end looks for held tasks, or counts that end. A start that holds nothing
--   never waits for an end, nor an end for it.
-- Lock order: task rows, kinds (shared), owners' rows (only a start that holds), start locks, end locks; an end:
-- its rows, its owners' rows (the counters' trigger), end locks (shared), then held tasks with SKIP LOCKED.

CREATE FUNCTION rt_key_start_lock(owner uuid, key text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended('rt.key.start:' || owner::text || ':' || key, 0)
$$;

-- A start's count of its keys' RUNNING and CANCELLING tasks: the keys' start locks, exclusive, in order; when
-- `holding` (the start may hold a task), also the end locks, exclusive, in order; then the count in a statement
-- of its own, whose fresh snapshot sees every start (and, when holding, every end) of these keys that committed
-- before the locks were granted.
CREATE FUNCTION rt_key_count(owners uuid[], keys text[], holding boolean)
RETURNS TABLE (owner_id uuid, concurrency_key text, running bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(l) FROM (
        SELECT DISTINCT rt_key_start_lock(o, k) AS l FROM unnest(owners, keys) AS u(o, k)
    ) AS s ORDER BY l;
    IF holding THEN
        PERFORM pg_advisory_xact_lock(l) FROM (
            SELECT DISTINCT rt_key_lock(o, k) AS l FROM unnest(owners, keys) AS u(o, k)
        ) AS s ORDER BY l;
    END IF;
    RETURN QUERY SELECT t.owner_id, t.concurrency_key, count(*) FROM tasks AS t
        WHERE (t.owner_id, t.concurrency_key) IN (SELECT * FROM unnest(owners, keys))
        AND t.concurrency_key IS NOT NULL AND t.status IN (2, 3)
        GROUP BY t.owner_id, t.concurrency_key;
END
$$;

-- The count of before (migration 0017), for a scheduler not yet upgraded: both locks, as a start that may hold.
CREATE OR REPLACE FUNCTION rt_key_running(owners uuid[], keys text[])
RETURNS TABLE (owner_id uuid, concurrency_key text, running bigint)
LANGUAGE sql VOLATILE AS $$ SELECT * FROM rt_key_count(owners, keys, true) $$;

-- The release of migration 0016, its keys' end locks now taken shared.
CREATE OR REPLACE FUNCTION rt_release_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    locks bigint[];
    ids uuid[];
BEGIN
    -- Only keyed rows are looked at: a statement changing no keyed running task costs one scan of its rows.
    SELECT array_agg(DISTINCT rt_key_lock(o.owner_id, o.concurrency_key)) INTO locks
    FROM before_rows AS o
    WHERE o.concurrency_key IS NOT NULL AND o.status IN (2, 3)
    AND EXISTS (SELECT 1 FROM after_rows AS a WHERE a.id = o.id AND a.status NOT IN (2, 3));
    IF locks IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(l) FROM unnest(locks) AS l ORDER BY l;
    WITH ended AS (
        SELECT o.owner_id, o.concurrency_key, count(*) AS n
        FROM before_rows AS o JOIN after_rows AS a ON a.id = o.id
        WHERE o.concurrency_key IS NOT NULL AND o.status IN (2, 3) AND a.status NOT IN (2, 3)
        GROUP BY o.owner_id, o.concurrency_key
    )
    SELECT array_agg(w.id) INTO ids FROM ended CROSS JOIN LATERAL (
        SELECT t.id FROM tasks AS t
        WHERE t.owner_id = ended.owner_id AND t.concurrency_key = ended.concurrency_key
        AND t.status = 1 AND t.held AND t.wait_reason = 2
        ORDER BY t.priority DESC, t.created_at, t.id LIMIT ended.n
        FOR UPDATE OF t SKIP LOCKED
    ) AS w;
    IF ids IS NOT NULL THEN
        PERFORM rt_unhold(ids);
    END IF;
    RETURN NULL;
END
$$;
