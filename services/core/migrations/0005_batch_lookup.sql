-- One index fewer on tasks, so each row version a transition writes adds one index entry fewer: a batch's id
-- is now the id of its first replica, and its replicas are found through the primary key and the
-- (owner_id, request_id, replica_index) unique key (task_model.in_batch). Batches submitted before keep
-- their ids and are found through this legacy index, which holds only their first replicas and which rows
-- submitted from now on never enter.
DROP INDEX tasks_owner_batch;
CREATE INDEX tasks_owner_batch_legacy ON tasks (owner_id, batch_id) WHERE replica_index = 0 AND batch_id <> id;
