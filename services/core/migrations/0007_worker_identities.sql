-- Worker ids that were given a worker token. Enrolment with the shared enrolment secret is granted only
-- for an id not in this table, so a worker can never obtain a token naming another worker; renewals (with
-- a live token of the same id) move renewed_at. Rows of ids not renewed for long are pruned at enrolment.
CREATE TABLE worker_identities (
    id text PRIMARY KEY,
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX worker_identities_renewed ON worker_identities (renewed_at);
