-- Recurring schedules (ScheduleService): what each one fires and when it fires next.

-- The schedule whose firing submitted a task; NULL for a task a user submitted. No foreign key: a schedule's
-- tasks outlive it, and a firing inserts its tasks while it holds the schedule's row locked.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS schedule_id uuid;

-- spec is the ScheduleSpec message as the user set it (validated before it is stored), in protobuf's wire
-- format: it is only ever read whole, to return it or to fire it, and the message already says what each field
-- is (a oneof of timings, a Struct payload, durations), so a column per field would be a second schema to
-- keep in step with the contract. What the schedulers query (when it fires next) has columns of its own.
CREATE TABLE schedules (
    id uuid PRIMARY KEY,
    owner_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- CreateSchedule's idempotency key.
    request_id text NOT NULL,
    spec bytea NOT NULL,
    paused boolean NOT NULL DEFAULT false,
    -- An interval's slots are anchor + k * interval (k >= 1): the creation, or the latest update of the spec.
    anchor timestamptz NOT NULL,
    -- The next slot not yet fired nor skipped; NULL while paused (or when the cron names no later time).
    next_slot timestamptz,
    -- next_slot plus its jitter, drawn once when next_slot was set, so every scheduler fires it at one time.
    fire_at timestamptz,
    -- The latest firing: its slot, the batch it submitted, and why the latest due slot did not fire ('' if it did).
    last_slot timestamptz,
    last_batch_id uuid,
    last_error text NOT NULL DEFAULT '',
    fired bigint NOT NULL DEFAULT 0,
    skipped bigint NOT NULL DEFAULT 0,
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, request_id)
);

-- What the schedulers claim (the due ones) and sleep until (the earliest).
CREATE INDEX schedules_due ON schedules (fire_at) WHERE fire_at IS NOT NULL;
-- ListSchedules pages, oldest first.
CREATE INDEX schedules_owner ON schedules (owner_id, created_at, id);

-- Every change of when a schedule fires (a new, updated, paused, resumed, fired or deleted schedule) wakes the
-- sleeping schedulers, at its commit, so they sleep until the new earliest time rather than poll.
CREATE FUNCTION rt_schedules_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rt_schedules', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER schedules_changed AFTER INSERT OR DELETE OR UPDATE OF fire_at ON schedules
FOR EACH STATEMENT EXECUTE FUNCTION rt_schedules_changed();
