-- The state machine enforced by the database, and cheaper writes per transition (docs/hot-path-db.md).

-- The allowed status changes: the same table as services/core/transitions/rules.py, which
-- tests/integration/test_transitions.py checks pair by pair against this function.
CREATE FUNCTION rt_transition_allowed(from_status smallint, to_status smallint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE from_status
        WHEN 1 THEN to_status IN (2, 5, 6)
        WHEN 2 THEN to_status IN (1, 2, 3, 4, 5, 6, 7)
        WHEN 3 THEN to_status IN (4, 6, 7)
        WHEN 5 THEN to_status = 1
        WHEN 6 THEN to_status = 1
        WHEN 7 THEN to_status = 1
        ELSE false
    END
$$;

-- Every change users can see bumps version here, never by hand: refuses a disallowed status change
-- (RT002), whichever statement attempts it.
CREATE FUNCTION rt_task_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT rt_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION USING ERRCODE = 'RT002', MESSAGE = format('status %s -> %s not allowed', OLD.status, NEW.status);
    END IF;
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

-- Only when a column of the Task message changes: publication bookkeeping (published, entry_id, ...) is
-- not a change users see, and such updates skip the trigger entirely.
CREATE TRIGGER tasks_changed BEFORE UPDATE ON tasks FOR EACH ROW
WHEN ((OLD.status, OLD.progress, OLD.attempt, OLD.worker_id, OLD.error, OLD.dead_lettered, OLD.result,
       OLD.started_at, OLD.finished_at)
      IS DISTINCT FROM (NEW.status, NEW.progress, NEW.attempt, NEW.worker_id, NEW.error, NEW.dead_lettered,
                        NEW.result, NEW.started_at, NEW.finished_at))
EXECUTE FUNCTION rt_task_changed();

-- History rows cost one index entry each: no surrogate key (its sequence and primary-key index), and no
-- foreign key, whose check locked the task row (a WAL record) for every history row. Rows are read by
-- (task_id, version) through task_history_task; a deleted task's history goes with it through this trigger.
ALTER TABLE task_history DROP CONSTRAINT task_history_task_id_fkey;
ALTER TABLE task_history DROP COLUMN id;

CREATE FUNCTION rt_forget_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_history USING gone WHERE task_history.task_id = gone.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_forget_history AFTER DELETE ON tasks REFERENCING OLD TABLE AS gone
FOR EACH STATEMENT EXECUTE FUNCTION rt_forget_history();

-- Room on each page for the next version of a row: progress updates (no indexed column changes) stay HOT,
-- and the other updates stay on their page, where their WAL record carries only the changed bytes.
ALTER TABLE tasks SET (fillfactor = 80);
