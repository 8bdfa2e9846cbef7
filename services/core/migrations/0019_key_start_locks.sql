-- Concurrency keys without starts and ends waiting for each other (docs/fair-sharing.md). Each key had one
-- advisory lock, taken exclusively by every start (to count the key's running tasks one start after the other)
-- and by every end (its release trigger: a start about to hold a task must commit before the end looks for held
-- tasks, or count the end). Held until commit, so every start and every end of a key waited for the commit of
-- the one before, a WAL flush each. Two locks per key now:
-- - the start lock (striped, below): every start takes it before it counts. Ends never take it: an end only
--   lowers the count, and a start that counted the ending task as running starts fewer, never more.
-- - the end lock (rt_key_lock, as before): an end takes it shared (ends no longer wait for each other); a start
--   takes it exclusively only when it must hold a task (the checked path's second pass, after its owners'
--   rows), so it still commits before an end looks for held tasks, or counts that end. A start that holds nothing
--   never waits for an end, nor an end for it.
-- Lock order: task rows, kinds (shared), owners' rows (only a start that holds), start locks, end locks; an end:
-- its rows, its owners' rows (the counters' trigger), end locks (shared), then held tasks with SKIP LOCKED.

-- The start lock is striped: STRIPES (4) advisory locks per key. A start that counts the key exactly takes them all
-- (exclusive mode). A start of a key far from its limit takes one (shared mode): it may start at most STRIPE_TASKS
-- (32) of the key's tasks, and only while the key's running tasks, plus its own, plus STRIPE_TASKS for each other
-- stripe stay within the limit. At most STRIPES starts of a key are uncommitted at once (one per stripe, or one
-- holding them all), and each counts every start committed before its lock was granted: the others, still
-- uncommitted, are at most STRIPES - 1 starts of at most STRIPE_TASKS each, so the limit holds, and starts of a key
-- far from its limit no longer wait for each other's commits. Locks are taken in the order (owner, key, stripe),
-- waiting only in that order (a shared-mode start tries the stripes without waiting, and waits for one only when all
-- are taken), so no two starts wait for each other in a cycle.
CREATE FUNCTION rt_key_stripe_lock(owner uuid, key text, stripe integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended('rt.key.start:' || owner::text || ':' || key || ':' || stripe::text, 0)
$$;

CREATE FUNCTION rt_key_stripes() RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 4 $$;
CREATE FUNCTION rt_key_stripe_tasks() RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 32 $$;

-- A start's count of its keys (one row per distinct key given), after their start locks: `wanted` tasks of the key
-- in this start (summed over the key's entries), the lowest of their `limits`. running: the key's RUNNING and
-- CANCELLING tasks, counted in a statement of its own (a fresh snapshot that sees every start, and when `holding`
-- every end, of these keys that committed before the locks were granted), plus, in shared mode, the room the other
-- stripes may take: a start may start a task of the key while running plus the task's place among its own stays
-- within the limit. `shared`: whether a key far from its limit may be counted in shared mode (the one-statement
-- start); otherwise, and always when `holding` (a start that may hold a task; it also takes the end locks, after
-- every stripe), every stripe.
CREATE FUNCTION rt_key_room(owners uuid[], keys text[], wanted integer[], limits integer[], shared boolean,
                            holding boolean)
RETURNS TABLE (owner_id uuid, concurrency_key text, running bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    rec record;
    stripe integer;
    got boolean;
    margins bigint[] := '{}';
    ordered_owners uuid[] := '{}';
    ordered_keys text[] := '{}';
BEGIN
    FOR rec IN
        SELECT u.o, u.k, sum(u.n) AS n, min(u.l) AS l FROM unnest(owners, keys, wanted, limits) AS u(o, k, n, l)
        GROUP BY u.o, u.k ORDER BY u.o, u.k
    LOOP
        IF shared AND NOT holding AND rec.n <= rt_key_stripe_tasks()
           AND rec.l >= (rt_key_stripes() - 1) * rt_key_stripe_tasks() + rec.n THEN
            got := false;
            FOR stripe IN 0 .. rt_key_stripes() - 1 LOOP
                IF pg_try_advisory_xact_lock(rt_key_stripe_lock(rec.o, rec.k, stripe)) THEN
                    got := true;
                    EXIT;
                END IF;
            END LOOP;
            IF NOT got THEN
                PERFORM pg_advisory_xact_lock(rt_key_stripe_lock(rec.o, rec.k, pg_backend_pid() % rt_key_stripes()));
            END IF;
            margins := margins || ((rt_key_stripes() - 1) * rt_key_stripe_tasks())::bigint;
        ELSE
            FOR stripe IN 0 .. rt_key_stripes() - 1 LOOP
                PERFORM pg_advisory_xact_lock(rt_key_stripe_lock(rec.o, rec.k, stripe));
            END LOOP;
            margins := margins || 0::bigint;
        END IF;
        ordered_owners := ordered_owners || rec.o;
        ordered_keys := ordered_keys || rec.k;
    END LOOP;
    IF holding THEN
        PERFORM pg_advisory_xact_lock(l) FROM (
            SELECT DISTINCT rt_key_lock(o, k) AS l FROM unnest(owners, keys) AS u(o, k)
        ) AS s ORDER BY l;
    END IF;
    RETURN QUERY SELECT m.o, m.k, coalesce(c.n, 0) + m.margin
        FROM unnest(ordered_owners, ordered_keys, margins) AS m(o, k, margin)
        LEFT JOIN (
            SELECT t.owner_id AS o, t.concurrency_key AS k, count(*) AS n FROM tasks AS t
            WHERE (t.owner_id, t.concurrency_key) IN (SELECT * FROM unnest(ordered_owners, ordered_keys))
            AND t.concurrency_key IS NOT NULL AND t.status IN (2, 3)
            GROUP BY t.owner_id, t.concurrency_key
        ) AS c ON c.o = m.o AND c.k = m.k;
END
$$;

-- Every stripe of the keys (and, when holding, their end locks), then the exact count: the checked path's count.
CREATE FUNCTION rt_key_count(owners uuid[], keys text[], holding boolean)
RETURNS TABLE (owner_id uuid, concurrency_key text, running bigint)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM rt_key_room(owners, keys, array_fill(1, ARRAY[coalesce(cardinality(owners), 0)]),
                              array_fill(0, ARRAY[coalesce(cardinality(owners), 0)]), false, holding)
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
