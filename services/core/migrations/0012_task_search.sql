-- Searching one user's tasks (ListTasks and CountTasks filters, bulk actions over a filter:
-- services/core/task_filters.py). Every index leads with owner_id, as every query filters by owner, and the
-- ordered ones end with the list order (created_at DESC, id DESC), so a filtered page is read in order and stops
-- at its limit rather than sorting every match.

-- Name contains, ignoring case: trigrams of lower(name). pg_trgm is a trusted extension (PostgreSQL 13+), so a
-- database owner without superuser may create it; the embedded server and the postgres image both ship it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX tasks_name_trgm ON tasks USING gin (lower(name) gin_trgm_ops);

-- The kind filter, in list order.
CREATE INDEX tasks_owner_kind ON tasks (owner_id, kind, created_at DESC, id DESC);

-- Partial, so they cost nothing for the rows they leave out: a schedule's runs, and the dead letters ("retry every
-- dead-lettered task").
CREATE INDEX tasks_owner_schedule ON tasks (owner_id, schedule_id, created_at DESC, id DESC)
    WHERE schedule_id IS NOT NULL;
CREATE INDEX tasks_owner_dead ON tasks (owner_id, created_at DESC, id DESC) WHERE dead_lettered;

-- The id prefix is a range of the primary key; time ranges use tasks_owner_recent (migration 0001).
