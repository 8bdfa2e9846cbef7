-- The surplus lane (docs/fair-sharing.md): an owner alone in the pool is not held back by the fair share.
-- Each kind and priority level has two streams: the share lane (the streams of before) and the surplus lane,
-- which workers read only after the share lane of the same level. A task let through while its owner is at or
-- beyond the fair cap (slots_per_user) but nobody else has active tasks goes to the surplus lane instead of
-- waiting held in PostgreSQL: the lone owner's burst reaches the workers at once, and a newcomer's task (below
-- its cap: the share lane) is read before that backlog. With other owners active the hold is as before, and
-- the fixed ceiling (RTASK_LIMIT_SLOT_SHARE) holds every owner, alone or not.

-- Which lane the task's current dispatch goes to (false: the share lane).
ALTER TABLE tasks ADD COLUMN surplus boolean NOT NULL DEFAULT false;

-- Written by the schedulers with slots_per_user: ceiling_slots is the fixed ceiling alone (NULL: none);
-- lone_owner the one owner with active tasks, the nil uuid when there is none, NULL when several owners have
-- some or the fair share is off (then slots_per_user holds everyone, as before).
ALTER TABLE slot_cap ADD COLUMN ceiling_slots integer, ADD COLUMN lone_owner uuid;

-- The cap beyond which an owner's tasks wait held: the ceiling for the owner alone in the pool (its tasks
-- beyond slots_per_user go to the surplus lane), slots_per_user for everyone else. NULL: no cap.
CREATE FUNCTION rt_hold_cap(cap slot_cap, owner uuid) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN cap.lone_owner = owner OR cap.lone_owner = '00000000-0000-0000-0000-000000000000'::uuid
                THEN cap.ceiling_slots ELSE cap.slots_per_user END
$$;

-- rt_admit (migration 0008) with its answer split by lane: {dispatchable now, of which in the share lane}; the
-- rest of the dispatchable ones go to the surplus lane. Same checks, same lock, same refusals.
CREATE FUNCTION rt_admit_lanes(
    owner uuid, request text, n integer, new_rows integer,
    max_active integer, max_stored integer, rate_per_s double precision, burst integer
) RETURNS integer[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    u record;
    tokens double precision;
    cap slot_cap;
    hold integer;
    dispatchable integer;
BEGIN
    SELECT active_tasks, stored_tasks, dispatched_tasks, submit_tokens, submit_tokens_at INTO u
    FROM users WHERE id = owner FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN ARRAY[n, n];  -- the insert's foreign key refuses it
    END IF;
    IF request <> '' AND EXISTS (SELECT 1 FROM tasks WHERE owner_id = owner AND request_id = request) THEN
        RETURN ARRAY[n, n];  -- a repeated request adds nothing: its first tasks are returned, whatever the limits now
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
    SELECT * INTO cap FROM slot_cap;
    hold := rt_hold_cap(cap, owner);
    dispatchable := CASE WHEN hold IS NULL THEN n ELSE least(n, greatest(0, hold - u.dispatched_tasks)) END;
    IF cap.slots_per_user IS NULL THEN
        RETURN ARRAY[dispatchable, dispatchable];
    END IF;
    RETURN ARRAY[dispatchable, least(dispatchable, greatest(0, cap.slots_per_user - u.dispatched_tasks))];
END
$$;

-- Kept for statements that do not tell lanes apart: what may be dispatched now.
CREATE OR REPLACE FUNCTION rt_admit(
    owner uuid, request text, n integer, new_rows integer,
    max_active integer, max_stored integer, rate_per_s double precision, burst integer
) RETURNS integer
LANGUAGE sql VOLATILE AS $$
    SELECT (rt_admit_lanes(owner, request, n, new_rows, max_active, max_stored, rate_per_s, burst))[1]
$$;

-- The release of migration 0017, each owner up to its own hold cap, and each released task's lane: those
-- beyond the owner's room under slots_per_user (counted in release order) go to the surplus lane. Same order,
-- same SKIP LOCKED.
CREATE OR REPLACE FUNCTION rt_release(owners uuid[]) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cap slot_cap;
    candidates uuid[];
    beyond boolean[];
    released integer;
BEGIN
    SELECT * INTO cap FROM slot_cap;
    SELECT array_agg(w.id), array_agg(w.rank > coalesce(r.share_room, w.rank)) INTO candidates, beyond FROM users
    CROSS JOIN LATERAL (
        -- greatest() ignores a NULL: no cap is spelled out.
        SELECT CASE WHEN h.hold IS NULL THEN NULL ELSE greatest(0, h.hold - users.dispatched_tasks) END AS room,
               CASE WHEN cap.slots_per_user IS NULL THEN NULL
                    ELSE greatest(0, cap.slots_per_user - users.dispatched_tasks) END AS share_room
        FROM (SELECT rt_hold_cap(cap, users.id) AS hold) AS h
    ) AS r
    CROSS JOIN LATERAL (
        SELECT c.id, row_number() OVER (
            ORDER BY c.created_at - make_interval(secs => 30 * level.priority), c.replica_index, c.id) AS rank
        FROM generate_series(1, 5) AS level(priority)
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
    UPDATE tasks SET held = false, wait_reason = 0, publish_after = now(), surplus = l.beyond
    FROM (
        SELECT locked.id, c.beyond FROM tasks AS locked
        JOIN unnest(candidates, beyond) AS c(id, beyond) ON c.id = locked.id
        WHERE locked.held AND locked.status = 1 AND locked.wait_reason IN (0, 1)
        ORDER BY locked.id
        FOR UPDATE OF locked SKIP LOCKED
    ) AS l
    WHERE tasks.id = l.id;
    GET DIAGNOSTICS released = ROW_COUNT;
    IF released > 0 THEN
        PERFORM pg_notify('rt_released', '');
    END IF;
    RETURN released;
END
$$;

-- The sweeper's release (migration 0008), each owner against its own hold cap.
CREATE OR REPLACE FUNCTION rt_release_waiting(max_owners integer) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cap slot_cap;
    owners uuid[];
BEGIN
    SELECT * INTO cap FROM slot_cap;
    SELECT array_agg(id) INTO owners FROM (
        SELECT id FROM users
        WHERE waiting_tasks > 0 AND coalesce(dispatched_tasks < rt_hold_cap(cap, users.id), true)
        ORDER BY id LIMIT max_owners FOR NO KEY UPDATE SKIP LOCKED
    ) AS o;
    IF owners IS NULL THEN
        RETURN 0;
    END IF;
    RETURN rt_release(owners);
END
$$;
