-- Change events that could not be appended to Redis (it was unreachable after the commit):
-- kept here, in order, until the scheduler appends them, so watchers miss nothing.
CREATE TABLE parked_events (
    id bigserial PRIMARY KEY,
    owner_id uuid NOT NULL,
    task bytea NOT NULL,
    previous_status smallint NOT NULL,
    deleted boolean NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);
