-- A task's priority (1 lowest to 5 most urgent, SubmitTaskRequest.priority) and its concurrency key: at most
-- concurrency_limit of the owner's tasks with the same key run at once. NULL key: none (and limit 0).
ALTER TABLE tasks ADD COLUMN priority smallint NOT NULL DEFAULT 3 CHECK (priority BETWEEN 1 AND 5);
ALTER TABLE tasks ADD COLUMN concurrency_key text;
ALTER TABLE tasks ADD COLUMN concurrency_limit integer NOT NULL DEFAULT 0
    CHECK ((concurrency_key IS NULL AND concurrency_limit = 0)
           OR (concurrency_key IS NOT NULL AND concurrency_limit BETWEEN 1 AND 1000));
