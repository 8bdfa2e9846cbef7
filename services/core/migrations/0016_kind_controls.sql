-- Controls of the shared pool (docs/fair-sharing.md): the operator role, kinds paused or rate-limited by an
-- operator, and concurrency keys. A task that may not start yet is held in the database (queued, unpublished,
-- `held`) with the reason in wait_reason (resilienttask.v1.WaitReason): 2 its concurrency key is full, 3 its
-- kind's rate limit is used up, 4 its kind is paused. Reasons 0 and 1 are the slot share's (migration 0008).

-- Who may call OperatorService (granted with `python -m services.gateway.operators grant EMAIL`).
ALTER TABLE users ADD COLUMN operator boolean NOT NULL DEFAULT false;

ALTER TABLE tasks ADD COLUMN IF NOT EXISTS wait_reason smallint NOT NULL DEFAULT 0;

-- One row per kind an operator ever controlled. paused_at: NULL while not paused. rate_*: at most rate_starts
-- starts per rate_period_ms across the pool (NULL: no limit; the window itself lives in Redis).
CREATE TABLE kind_controls (
    kind text PRIMARY KEY,
    paused_at timestamptz,
    rate_starts integer CHECK (rate_starts BETWEEN 1 AND 100000),
    rate_period_ms bigint CHECK (rate_period_ms BETWEEN 1000 AND 3600000),
    CHECK ((rate_starts IS NULL) = (rate_period_ms IS NULL))
);

-- wait_reason is part of the Task message: a change of it bumps the version like any other (0004).
DROP TRIGGER tasks_changed ON tasks;
CREATE TRIGGER tasks_changed BEFORE UPDATE ON tasks FOR EACH ROW
WHEN ((OLD.status, OLD.progress, OLD.attempt, OLD.worker_id, OLD.error, OLD.dead_lettered, OLD.result,
       OLD.started_at, OLD.finished_at, OLD.wait_reason)
      IS DISTINCT FROM (NEW.status, NEW.progress, NEW.attempt, NEW.worker_id, NEW.error, NEW.dead_lettered,
                        NEW.result, NEW.started_at, NEW.finished_at, NEW.wait_reason))
EXECUTE FUNCTION rt_task_changed();

-- A task that leaves the queue (cancelled while held, say) waits for nothing any more: whatever sets it queued
-- again (a retry) holds it afresh, for its own reasons.
CREATE FUNCTION rt_wait_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.wait_reason := 0;
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_wait_ended BEFORE UPDATE ON tasks FOR EACH ROW
WHEN (OLD.wait_reason IN (2, 3, 4) AND NEW.status <> OLD.status)
EXECUTE FUNCTION rt_wait_ended();

-- Tasks held for their kind (rate limit, pause), found by kind in release order; running and waiting tasks of
-- a concurrency key, found by key.
CREATE INDEX tasks_held_by_kind ON tasks (kind, wait_reason, priority DESC, created_at)
    WHERE held AND status = 1 AND wait_reason IN (3, 4);
CREATE INDEX tasks_keyed ON tasks (owner_id, concurrency_key, status)
    WHERE concurrency_key IS NOT NULL AND status IN (1, 2, 3);

-- Advisory lock keys: a kind's (starts share it, PauseKind takes it alone) and a concurrency key's.
CREATE FUNCTION rt_kind_lock(kind text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtextextended('rt.kind:' || kind, 0) $$;

CREATE FUNCTION rt_key_lock(owner uuid, key text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtextextended('rt.key:' || owner::text || ':' || key, 0) $$;

-- The controls of the given kinds that keep their tasks from starting unchecked (paused or rate-limited),
-- called by every start statement. First a shared lock per kind, held until the start commits: PauseKind
-- takes the same lock exclusively, so it waits for every start in flight. Then the read, in a statement of its
-- own: a volatile function's statements each take a fresh snapshot, so a pause that committed before this
-- start got its lock is seen, even when the calling statement's snapshot is older. Together: every start either
-- committed before the pause returned, or sees the pause.
CREATE FUNCTION rt_kind_gates(kinds text[]) RETURNS SETOF kind_controls
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(rt_kind_lock(k))
    FROM (SELECT DISTINCT k FROM unnest(kinds) AS u(k) ORDER BY k) AS sorted;
    RETURN QUERY SELECT * FROM kind_controls
        WHERE kind = ANY(kinds) AND (paused_at IS NOT NULL OR rate_starts IS NOT NULL);
END
$$;

-- Hand held tasks back to the slot share: their own reason is gone, and they wait only for their owner's
-- share of the slots (rt_release publishes as many as it allows, the slot-cap sweep the rest). Returns how many.
CREATE FUNCTION rt_unhold(ids uuid[]) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    owners uuid[];
    n integer;
BEGIN
    WITH done AS (
        UPDATE tasks SET wait_reason = 0 WHERE id = ANY(ids) AND held AND status = 1 AND wait_reason IN (2, 3, 4)
        RETURNING owner_id
    )
    SELECT array_agg(DISTINCT owner_id), count(*) INTO owners, n FROM done;
    IF n > 0 THEN
        PERFORM rt_release(owners);
    END IF;
    RETURN n;
END
$$;

-- When running tasks of a concurrency key end (success, failure, timeout, cancel, a retry sent back to the
-- queue, a takeover that ended a dead worker's task), as many of the key's held tasks as ended are let go:
-- highest priority first, then oldest. They are checked again at their start (under the key's lock), so a
-- release is never more than an offer; SKIP LOCKED: a held task being changed is left to the sweep.
-- The keys' locks first (in order): a start holding one is counting the key's running tasks and may be about
-- to hold a task; once it commits, that task is seen here and let go (else it would wait for the sweep).
-- The trigger is named to fire before tasks_counted_update, so that, like a start, it takes the keys' locks
-- before its owners' rows: the same order everywhere, no deadlock.
CREATE FUNCTION rt_release_keys() RETURNS trigger
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
    PERFORM pg_advisory_xact_lock(l) FROM unnest(locks) AS l ORDER BY l;
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

CREATE TRIGGER tasks_by_key_released AFTER UPDATE ON tasks REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
FOR EACH STATEMENT EXECUTE FUNCTION rt_release_keys();

-- The slot share's releases (0008) take only its own holds: a task held for its key, rate or pause is not the
-- slot share's to publish.
CREATE OR REPLACE FUNCTION rt_release(owners uuid[]) RETURNS integer
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
            WHERE t.owner_id = users.id AND t.held AND t.status = 1 AND t.wait_reason IN (0, 1)
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

-- The sweep's release of concurrency keys (a release skipped a locked task, or a key's limit was raised by a
-- later submission): keys with held tasks and fewer running than their limit. No key lock: a release is only an
-- offer (each start checks again under the lock), and this sweep must not wait on keys while holding rows.
CREATE FUNCTION rt_release_keys_waiting(max_keys integer) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k record;
    running integer;
    ids uuid[];
    released integer := 0;
BEGIN
    FOR k IN
        SELECT owner_id, concurrency_key, max(concurrency_limit) AS lim FROM tasks
        WHERE concurrency_key IS NOT NULL AND status = 1 AND held AND wait_reason = 2
        GROUP BY owner_id, concurrency_key LIMIT max_keys
    LOOP
        SELECT count(*) INTO running FROM tasks
        WHERE owner_id = k.owner_id AND concurrency_key = k.concurrency_key AND status IN (2, 3);
        CONTINUE WHEN running >= k.lim;
        SELECT array_agg(id) INTO ids FROM (
            SELECT id FROM tasks
            WHERE owner_id = k.owner_id AND concurrency_key = k.concurrency_key
            AND status = 1 AND held AND wait_reason = 2
            ORDER BY priority DESC, created_at, id LIMIT k.lim - running
            FOR UPDATE SKIP LOCKED
        ) AS w;
        IF ids IS NOT NULL THEN
            released := released + rt_unhold(ids);
        END IF;
    END LOOP;
    RETURN released;
END
$$;
