"""The task state machine in one place: which status changes are allowed, what each writes (the task row,
its history row; the version bump is the database's), and the change event it returns for the caller to
announce once the statement has committed.

- rules: the allowed-transition table, history rows, change events;
- user: submit (at once or SCHEDULED), cancel, retry, delete, clear history (the gateway);
- due: SCHEDULED tasks whose run_at has come become QUEUED (the scheduler's due publisher);
- start, finish: a worker's start and outcome reports, fenced (the scheduler);
- sweeps: progress, and attempts nobody finished (the scheduler).
"""
