-- Users, tasks and the history of every task transition.
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Fence tokens: every started attempt gets a new one, so reports of a superseded attempt are refused.
CREATE SEQUENCE fence_seq;

-- status holds the resilienttask.v1.TaskStatus numbers (1 queued .. 7 timed out).
CREATE TABLE tasks (
    id uuid PRIMARY KEY,
    owner_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    status smallint NOT NULL,
    progress double precision NOT NULL DEFAULT 0,
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    worker_id text NOT NULL DEFAULT '',
    error text NOT NULL DEFAULT '',
    request_id text NOT NULL,
    batch_id uuid NOT NULL,
    replica_index integer NOT NULL,
    workload_ms bigint NOT NULL,
    max_runtime_ms bigint NOT NULL,
    dead_lettered boolean NOT NULL DEFAULT false,
    result jsonb,
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    -- Dispatch bookkeeping: only an entry carrying the current dispatch_id may start the task;
    -- entry_id is the stream entry published for it, then the one that started the current attempt.
    dispatch_id uuid NOT NULL,
    entry_id text NOT NULL DEFAULT '',
    published boolean NOT NULL DEFAULT false,
    published_at timestamptz,
    -- When the scheduler's sweeper publishes the task if nobody did (retry backoff, or Redis was down).
    publish_after timestamptz NOT NULL DEFAULT now(),
    fence bigint NOT NULL DEFAULT 0,
    UNIQUE (owner_id, request_id, replica_index)
);

CREATE INDEX tasks_owner_recent ON tasks (owner_id, created_at DESC, id DESC);
CREATE INDEX tasks_owner_batch ON tasks (owner_id, batch_id);
CREATE INDEX tasks_unpublished ON tasks (publish_after) WHERE status = 1 AND NOT published;
CREATE INDEX tasks_queued_published ON tasks (published_at) WHERE status = 1 AND published;
CREATE INDEX tasks_running ON tasks (started_at) WHERE status IN (2, 3);

CREATE TABLE task_history (
    id bigserial PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    version bigint NOT NULL,
    from_status smallint,
    to_status smallint NOT NULL,
    attempt integer NOT NULL,
    worker_id text NOT NULL DEFAULT '',
    fence bigint NOT NULL DEFAULT 0,
    detail text NOT NULL DEFAULT '',
    at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX task_history_task ON task_history (task_id, version);
