-- Tracing (docs/observability.md): the W3C traceparent of the call that submitted the task, so that every
-- dispatch of it (the first, retries, republications, reclaims) continues the submission's trace. NULL when
-- tracing was off at submit time. Nullable without a default: adding it rewrites no row.
ALTER TABLE tasks ADD COLUMN trace_parent text CHECK (length(trace_parent) <= 55);
